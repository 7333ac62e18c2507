"""Throughput benchmark of (backbone, attention) pairs: ``python -m attn_zoo.bench``.

    python -m attn_zoo.bench                                   # tiny CPU preset (conf/bench/tiny.yaml)
    python -m attn_zoo.bench bench=resnet50 timm=true          # ResNet-50 x {none, se, eca, cbam}, and timm's
    python -m attn_zoo.bench bench=cifar attentions=[none,se] modes=[compiled] iters=50 out=cifar.csv
    python -m attn_zoo.bench bench=resnet50 attentions=[none,se,eca] fused_tail=true   # + fused-tail rows

Arguments are Hydra overrides of ``conf/bench.yaml`` (a preset from ``conf/bench/`` first). For each
pair and each mode, ``eager`` or ``compiled`` (``torch.compile`` of the model), it measures:

- params, and forward FLOPs and MACs for one image (``attn_zoo.cost.count_flops``:
  torch.utils.flop_counter, FLOPs = 2 x MACs, convolutions and matrix products only);
- training images/s: forward, cross-entropy loss, backward and an SGD-momentum step, in train mode;
- inference images/s: forward in eval mode under ``torch.no_grad``;
- peak GPU memory of each (``torch.cuda.max_memory_allocated``; empty on CPU). The training peak holds
  weights, gradients, momentum buffers and activations; the optimizer is freed before inference.

Data: one random batch, made once on the device and reused (no loader, no host-to-device copy).
Timing: ``warmup`` untimed steps (in compiled mode they include compilation), then ``windows`` windows
of ``iters`` steps; a window is timed by ``torch.utils.benchmark.Timer`` (the accelerator synchronised
before and after, max(iters // 100, 2) untimed steps first, the process's thread count), and the reported images/s is the median over the windows. Precision: bf16 autocast on CUDA and float32 on
CPU by default (``dtype``); ``channels_last`` puts the model and the batch in that memory format.
Only the model is compiled; the loss and the optimizer step run eagerly.

``measure=[train]`` (or ``[infer]``) times one of the two only. ``profile=true`` also writes, per model
and mode, ``<out without .csv>.<model>.<mode>.profile.txt`` (timm's ``<out without .csv>.timm.<model>...``): torch.profiler over ``iters`` training steps, with the
wall time per step, the device's busy (kernel) time per step and the operators by device time.

``fused_tail=true`` adds, after each of our models whose attention has a fused block tail (se, eca),
the same model built with ``backbone.fused_tail=true`` (``attn_zoo.fused.bn_se_tail``), as model
``<backbone>+<attention>+fused_tail``, relative to the same plain ``none`` baseline; ``fused_tail=triton``
the model with Triton reductions (``+fused_tail_triton``); ``fused_tail=[true,triton]`` both.

Output: a markdown table on stdout and a CSV (``out``, default ``bench.csv`` in the current
directory), one row per (model, mode), with throughput relative to the ``none`` attention of the
same implementation, backbone and mode. A model that fails to build, compile or run gets a row with
empty rates and the exception in ``error``; the rows after it still run, and the exit status is 1.

``compile_jobs=N`` (compiled mode) first compiles each (backbone, attention) pair, with its fused-tail
and timm variants, in N parallel processes whose timings are discarded; the timed run then finds the
compiled code in Inductor's on-disk caches (the device time it saves: BENCHMARKS.md, "Saving device
time"). Timing is unchanged: one model at a time, nothing else running.

The package: ``settings`` (conf/bench.yaml, checked), ``candidates`` (ours, fused-tail, timm),
``timing`` (windows, memory), ``measure`` (one model in one mode), ``warming`` (parallel compile
caches), ``tables`` (CSV, markdown) and ``cli`` (``main``).
"""
