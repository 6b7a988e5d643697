"""The eval commands as one table, by the registry's task names (ModelSpec.task.name), for tools that run a
command's evaluation on a model they hold: weights_tools.quantize calibrates on the first examples the
command reads, through the command's own reader, preprocessing and batching.

    results = run_eval_command("vqa", model, model_name="vlmo", data="VQAv2", limit=64)
"""
from collections.abc import Callable
from dataclasses import dataclass

from eval import imagenet, retrieval, sst2, vqa
from eval.options import EvalOptions
from npu_models.errors import UserError


@dataclass(frozen=True)
class EvalCommand:
    options: type[EvalOptions]                 # the command's options dataclass (what its flags parse into)
    evaluate: Callable[..., dict]              # evaluate(options, model=None) -> the results JSON
    limited: str                               # the results key counting what `limit` takes the first of


EVAL_COMMANDS = {
    "sst2": EvalCommand(sst2.SST2Options, sst2.evaluate, "num_examples"),
    "imagenet": EvalCommand(imagenet.ImageNetOptions, imagenet.evaluate, "num_images"),
    "vqa": EvalCommand(vqa.VQAOptions, vqa.evaluate, "num_questions"),
    "retrieval": EvalCommand(retrieval.RetrievalOptions, retrieval.evaluate, "num_images"),
}


def run_eval_command(task: str, model=None, model_name: str | None = None, **option_values) -> dict:
    """The eval command of `task` run on the ready `model` (None: the one its options load) with its options
    built from `option_values` (fields of its options dataclass: data, checkpoint, limit, batch_size, ...);
    returns its results. `model_name` is the options' `model` (the registry or short name of `model`; None:
    the task's default model), renamed here because `model` is the module itself."""
    command = eval_command(task)
    return command.evaluate(command.options(model=model_name, **option_values), model)


def eval_command(task: str) -> EvalCommand:
    if task not in EVAL_COMMANDS:
        raise UserError(f"no eval command for task {task!r}; the commands are {', '.join(EVAL_COMMANDS)}.")
    return EVAL_COMMANDS[task]
