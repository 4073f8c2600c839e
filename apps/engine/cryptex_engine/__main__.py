"""`python -m cryptex_engine --market M` runs the engine; `python -m cryptex_engine replay
--market M` rebuilds a market from its stream and prints its state hash (replay.py)."""

import sys

if sys.argv[1:2] == ["replay"]:
    from cryptex_engine.replay import main as replay

    replay(sys.argv[2:])
else:
    from cryptex_engine.main import main

    main()
