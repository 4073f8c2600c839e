from cryptex_api.main import main

main()
