"""What the model-based learners (SNAIL, MANN and its LSTM baseline) share: they learn a task by
reading it as a sequence of (embedding, one-hot label) steps, with no gradient step at test time.

Two protocols reach them through the same contract:
- episodic: the support steps carry their own labels; each query is one more step with a zero
  label, read after the support set alone (queries are predicted in parallel, each seeing the
  support set and itself only);
- online (Santoro et al. 2016; `task.protocol=online`): the episode arrives as one sequence
  (an empty support set, the sequence in the queries) whose step t shows the label of step t-1,
  so every step is predicted before its label is seen; the score is the accuracy at each
  presentation of a class (metarun.metrics.accuracy_by_instance).
A subclass implements `read` (the sequence model) and sets `self.model` (the embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params
from metarun.metrics import accuracy_by_instance


class SequenceLearner(Algorithm):
    capabilities = Capabilities(reads_sequences=True)
    out_features: int  # classes the label encoding and the output can hold

    def read(self, params: Params, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class scores at every step of sequences [B, T, D] with label inputs [B, T, ways]:
        [B, T, ways]. Causal: step t depends on steps <= t only."""
        raise NotImplementedError

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_classification(support_y)
        self.check_ways(support_y, ways)
        support = self.run(params, support_x)  # [S, D]
        labels = F.one_hot(support_y, self.out_features).to(support.dtype)  # [S, ways]

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            queries = self.on_queries(lambda x: self.run(params, x), support_x, query_x)  # [Q, D]
            return self.read_queries(params, support, labels, queries)

        return predict

    def read_queries(
        self, params: Params, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor
    ) -> torch.Tensor:
        """Class scores of each query [Q, D] read as the step after the support set ([S, D],
        label inputs [S, ways]): [Q, ways]. This reads Q whole sequences; a learner with a
        cheaper way (reusing the support set's computation) overrides it, tested against this."""
        count = queries.shape[0]
        features = torch.cat([support.expand(count, -1, -1), queries.unsqueeze(1)], dim=1)
        no_label = labels.new_zeros(count, 1, labels.shape[-1])
        label_inputs = torch.cat([labels.expand(count, -1, -1), no_label], dim=1)
        return self.read(params, features, label_inputs)[:, -1]

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Episodic: the base class's. Online (empty support): cross-entropy over every step,
        scored as the accuracy by instance [T // ways]."""
        if support_x.shape[0] > 0:
            return super().task_loss(params, support_x, support_y, query_x, query_y, ways, steps)
        self.check_ways(query_y, ways)
        features = self.run(params, query_x)  # [T, D]
        shown = F.one_hot(query_y, self.out_features).to(features.dtype)
        label_inputs = torch.cat([torch.zeros_like(shown[:1]), shown[:-1]])  # step t sees y_{t-1}
        logits = self.read(params, features.unsqueeze(0), label_inputs.unsqueeze(0))[0]
        loss = F.cross_entropy(logits, query_y)
        return loss, accuracy_by_instance(logits, query_y, query_y.shape[0] // ways)
