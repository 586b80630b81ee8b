"""ADML (Yin, Tang, Xu, Wang 2018, arXiv:1806.03316): MAML meta-trained with clean and
adversarial examples in both loops, crossed. Each task is adapted twice from the
initialisation, once on its clean support set and once on an adversarial copy; the meta-loss
is the adversarially adapted model's loss on the clean queries plus the cleanly adapted
model's loss on adversarial queries. Test-time adaptation is MAML's.

The crossing is our reading of the paper's algorithm: the copies of the paper reachable when
this was written gave its abstract and a second-hand description (both loops, both kinds of
examples, contributing equally), not its algorithm box. Left open there, our choices: the
support set's adversarial copy is made against the initialisation (the model its inner step
differentiates) and the queries' against the cleanly adapted model (the model they are scored
with), both as constants (no gradient through the attack), afresh at every meta-iteration;
one inner learning rate serves both adaptations. The attack is task.attack (the paper's FGSM,
or PGD) with task.epsilon. `first_order=true` drops the second-order terms, as in first-order
MAML.
"""

from __future__ import annotations

import torch

from metarun.algorithms.base import Capabilities
from metarun.algorithms.functional import Params
from metarun.algorithms.maml import MAML
from metarun.attacks import nll_of
from metarun.metrics import task_loss_and_score


class ADML(MAML):
    # not compiled: its attack inside the meta-gradient is not tested compiled
    capabilities = Capabilities(needs_train_attack=True)

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
        if not self.training:
            return super().task_loss(params, support_x, support_y, query_x, query_y, ways, steps)
        attack = self.train_attack
        assert attack is not None  # build_algorithm refuses ADML without one (its capabilities)
        start = self.inner_loop(params, support_x, support_y, ways, 0)[0]
        initial = lambda s: self.run_at_step(start, s, 0)
        adversarial_support = attack.perturb(nll_of(self, initial, support_y), support_x)
        from_adversarial = self.adapt(params, adversarial_support, support_y, ways, steps)
        from_clean = self.adapt(params, support_x, support_y, ways, steps)
        adversarial_queries = attack.perturb(nll_of(self, from_clean, query_y), query_x)
        clean_loss, clean_score = task_loss_and_score(from_adversarial(query_x), query_y)
        robust_loss, robust_score = task_loss_and_score(from_clean(adversarial_queries), query_y)
        return clean_loss + robust_loss, (clean_score + robust_score) / 2
