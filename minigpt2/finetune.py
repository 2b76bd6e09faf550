"""Entry point of `python -m minigpt2.finetune`; the command lives in the application (`app.finetune`)."""

from app.finetune import main

if __name__ == "__main__":
    main()
