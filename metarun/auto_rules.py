"""Every threshold of the `auto` rules, next to the measurement that set it (docs/results.md has
the runs). The rules themselves: processes and threads in metarun.launch, the engine in
metarun.engine, compilation in metarun.compiling, Conv-4's first block in
metarun.backbones.conv4."""

# processes=auto (metarun.launch), measured on a 2-core CPU:
# Largest image side at which processes beat threads for a convolutional model: on 28x28
# Omniglot two processes of one thread ran MAML 5w1s 1.4x faster than one process of two
# threads; at 84x84 they were 1.0x (MAML and Relation Networks on miniImageNet-sized images).
SMALL_IMAGE = 32
# Shorter runs keep one process: a second process added 4.3 s to a one-iteration run and MAML
# 5w1s gains about 0.2 s per iteration from it, so it pays after some 20 iterations.
MIN_ITERATIONS = 100
# Bytes a process may peak at: 1.0 GB (looped) to 3.1 GB (compiled vmap, Meta-SGD) during a
# 5-way 1-shot Omniglot preset's run, compilation included.
MEMORY_PER_PROCESS = 3 * 2**30

# engine=auto (metarun.engine): the largest meta-training task (support + query images) whose
# meta-batch a CPU vmaps. With 2 processes x 1 thread, both compiled: 10 images (5-way 1-shot,
# 1 query: the MAML, ANIL and Meta-SGD presets' training tasks) vmap 1.15-1.55x the loop for
# MAML, 1.4x for ANIL, 1.2x for Meta-SGD; 20 (3 queries) even; 40 (20-way, 1 query, 5 steps)
# and 80 (15 queries) loop 1.15-1.4x.
SMALL_TASK_IMAGES = 16

# compile=auto (metarun.compiling): meta-batches a run must plan before a convolutional
# meta-gradient is compiled. On 2 cores compiling cost 54 s (W1) / 149 s (W3) and saved 0.42 /
# 0.95 s per meta-batch, so it paid after 130 / 157; the margin covers slower compilers and
# shapes not measured, and keeps short and smoke runs uncompiled.
COMPILE_PAYS_AFTER = 500

# Conv-4's first block (metarun.backbones.conv4): the most values in a patch (input channels x
# 9) for which the block is one product when compiled on a CPU: one channel measured 1.21x
# (Omniglot), three 0.97x (84x84, miniImageNet).
PATCH_VALUES_FOR_PRODUCT = 9
