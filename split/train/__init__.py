"""Offline work on split models: distillation, fine-tuning, prefilter training, evaluation, datasets.

Nothing on the device's or the edge's import path imports this package (DESIGN.md §2):
pycocotools, tqdm and matplotlib are used here and in the command-line tools only. The
commands are `splitedge train|eval|prefilter|finetune` (`split.train.cli`).

Modules: `distill` (HND/GHND; its `plan` and `teacher_cache`), `config` (the YAML recipes),
`finetune`, `prefilter` (training the run-time `split.prefilter`), `evaluation`, and the
datasets `data` (image folders, splits, augmentation) and `coco` (the COCO reader).
"""
