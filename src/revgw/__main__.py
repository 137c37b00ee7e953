from revgw._cli import main

main()
