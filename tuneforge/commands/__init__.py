"""The verbs of the `tuneforge` command, one module per area; tuneforge/cli.py lists them in order.

    train.py      tuneforge train         (config -> the method's recipe)
    generate.py   tuneforge generate      (a model answers, or chats)
    evaluate.py   tuneforge eval | compare
    data.py       tuneforge validate | preview | split | dedup
    advise.py     tuneforge advise        (before training: prompting vs a fine-tune, learning curve)
    export.py     tuneforge export
    config.py     tuneforge config        (every training config key)

The verbs live above the areas because a verb may wire several together (validate's estimate builds the
model; train checks the data, then runs a recipe), and the areas must not import upward. Each module
adds its parsers with `add_<verb>_command(subparsers)` and imports torch only inside the verb it runs,
so `tuneforge --help` stays fast. The service's verbs are tuneforge/service/commands.py.
"""
