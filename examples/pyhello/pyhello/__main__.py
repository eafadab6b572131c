from pyhello import main

main()
