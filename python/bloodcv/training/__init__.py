"""Training recipes for bloodcv's default models, in layers:

- config: one config schema and loader (and the options every recipe's command line takes);
- common: seeding, RNG state, atomic checkpoints, the log;
- evaluation: the recipes' numbers, computed by the library (bloodcv.eval, the runtime);
- the recipes, one module per task of `python -m bloodcv.train TASK`: detector (YOLOv5-style, with the
  DetectorTrainer the detector recipes share), retinanet (RetinaNet-PAN-IoU, a DetectorTrainer), classifier.

A recipe module defines HELP (one line), add_arguments(parser) and run(args) -> int; adding a task is adding
such a module and its name to TASKS.
"""
TASKS = ("detector", "retinanet", "classifier")
