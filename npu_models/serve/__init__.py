"""`python -m npu_models.serve`: the deployed form of the models, behind HTTP with dynamic batching (see cli.py).

The server sits above the eval commands: it prepares inputs and finds a checkpoint's vocabulary and answer list
as they do (eval.data, eval.samples), so that a request's answer is the eval command's answer for that input.
"""
