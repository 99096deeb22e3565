"""The student stage: distil the student (and the benchmark's baselines) from its teachers.

Read it top to bottom in `recipe` (`distil_and_evaluate`); the other modules are its steps, in
order: `prompts` (the run's prompt records by split and tag), `readings` (the teachers' answers
and scores), `plans` (the models to train and what each learns), `targets` (choice, projection,
fusion, accounting), `batches` and `loss` (what the trainer sees), `on_policy` (the student's
own graded samples mixed in, with `student.on_policy`), `workers` (training and scoring, side by
side in processes). No module here imports one that calls it.
"""
