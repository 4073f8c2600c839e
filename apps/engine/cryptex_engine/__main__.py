from cryptex_engine.main import main

main()
