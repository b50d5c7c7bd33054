from recallkit.launch import main

main()
