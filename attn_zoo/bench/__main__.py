from attn_zoo.bench.cli import main

raise SystemExit(main())
