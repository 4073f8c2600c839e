"""`python -m cryptex_engine --market M` runs the engine; `python -m cryptex_engine replay
--market M` rebuilds a market from its stream and prints its state hash (replay.py);
`python -m cryptex_engine reconcile` runs one reconciler pass and prints what it repaired
(reconcile_cli.py)."""

import sys

if sys.argv[1:2] == ["replay"]:
    from cryptex_engine.replay import main as replay

    replay(sys.argv[2:])
elif sys.argv[1:2] == ["reconcile"]:
    from cryptex_engine.reconcile_cli import main as reconcile

    reconcile(sys.argv[2:])
else:
    from cryptex_engine.main import main

    main()
