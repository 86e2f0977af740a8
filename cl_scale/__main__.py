from cl_scale.cli import main

main()
