from rnnkit.cli.main import main

if __name__ == "__main__":  # not when a spawned worker process (rnnkit tune --jobs) imports it
    raise SystemExit(main())
