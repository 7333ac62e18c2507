"""Command-line tools around the training package, each ``python -m attn_zoo.tools.<name>``:
``loader_speed`` (the input pipeline timed alone), ``build_embedded`` (the embedded CIFAR-10 subset),
``jpeg_folder`` (a synthetic ImageNet-like JPEG folder for speed tests) and ``reproduce`` (a results
table's runs within a time limit, packed for ``results/``)."""
