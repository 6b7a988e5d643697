"""Run our model on a reference fixture directory and compare with the reference outputs.

    python -m weights_tools.verify --model bert DIR

DIR holds one or more checkpoints in the official layout, `inputs.safetensors` and `outputs.safetensors`.
Every checkpoint is converted and run on the inputs; every output tensor our model produces is compared.
Exit status 0 only when all of them are within tolerance.
"""
import argparse
import contextlib
import inspect
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from npu_models import parallel, registry, runtime
from npu_models.parallel import gather_heads
from npu_models.checkpoints.io import is_converted_dir, read_state_dict
from npu_models.errors import UserError, cli_main

# (atol, rtol) per dtype. fp32 is the parity bar: real bugs such as a tanh GELU move logits by ~5e-5.
# bf16 (8-bit mantissa) and fp16 (11-bit) round every op; over the fixtures' 2-12 layers the largest
# differences measured against the fp32 reference were 6.2e-2 (bf16) and 7.4e-3 (fp16), so these bounds
# catch wrong masks, layouts or kernels, not last-bit effects.
DEFAULT_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (5e-2, 5e-2), torch.float16: (1e-2, 1e-2)}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz", ".tar.gz")
FIXTURE_FILES = ("inputs.safetensors", "outputs.safetensors", "preprocessed.safetensors")


# ---- what each fixture records, produced by the methods the eval commands run ---------------------------
# Intermediates are read with forward hooks on the production modules ("path" records a module's output,
# "path:input" its first input), so the model files carry no fixture-only code paths.


@contextlib.contextmanager
def recording(model: torch.nn.Module, points: dict[str, str]):
    """{fixture name: module path} -> a dict filled while the block runs (a module's last call wins)."""
    recorded, handles = {}, []
    for name, point in points.items():
        path, _, what = point.partition(":")
        module = model.get_submodule(path)
        if what == "input":
            hook = module.register_forward_pre_hook(lambda m, args, name=name: recorded.__setitem__(name, args[0]))
        else:
            hook = module.register_forward_hook(lambda m, args, out, name=name: recorded.__setitem__(name, out))
        handles.append(hook)
    try:
        yield recorded
    finally:
        for hook in handles:
            hook.remove()


# A classifier's last block computes only the [CLS] row; the fixtures' full last hidden states come from the
# encoder method (forward_features), the logits and pooled vectors from the classifier path.
def bert_outputs(model, input_ids, attention_mask, token_type_ids):
    with recording(model, {"embeddings_output": "embeddings", "pooler_output": "classifier:input"}) as out:
        out["logits"] = model(input_ids, attention_mask, token_type_ids)
    out["last_hidden_state"] = model.forward_features(input_ids, attention_mask, token_type_ids)
    out["probs"] = out["logits"].float().softmax(dim=-1)
    return out


def vit_outputs(model, pixel_values):
    with recording(model, {"patch_embed": "patch_embed", "pooled": "head:input"}) as out:
        out["logits"] = model(pixel_values)
    out["features"] = model.forward_features(pixel_values)
    out["probs"] = out["logits"].float().softmax(dim=-1)
    return out


def vlmo_outputs(model, image, text_ids, text_masks):
    p = "vqa" if model.config.head == "vqa" else "irtr"
    embeddings = {f"{p}.text_embeddings_bert": "text_embeddings", f"{p}.patch_embed": "patch_embed"}
    with recording(model, embeddings) as out:
        out[f"{p}.text_input_embeds"], out[f"{p}.image_input_embeds"] = model.embed_text(text_ids), model.embed_image(image)
    out[f"{p}.visual_embed"] = out[f"{p}.image_input_embeds"] - model.modality_embeddings.weight[1]  # before the modality
    blocks = {f"{p}.joint.hidden.layer{i}": f"blocks.{i}" for i in range(len(model.blocks))} if p == "vqa" else {}
    with recording(model, blocks) as joint:
        out[f"{p}.joint.final_norm"] = model.joint_features(image, text_ids, text_masks)
    out.update(joint)
    out[f"{p}.joint.cls_feats"] = model.joint_cls_feats(image, text_ids, text_masks)
    out[f"{p}.joint.raw_cls_feats"] = out[f"{p}.joint.final_norm"][:, 0]
    for layer in (0, len(model.blocks) - 1):
        biases = model.position_biases(model.position_index("joint"))
        out[f"{p}.joint.rel_pos_bias.layer{layer}"] = gather_heads(biases[layer], model)
    out.update({"debug.relative_position_index": model.image_position_index,
                "debug.text_relative_position_index": model.text_position_index,
                "debug.text_imag_relative_position_index": model.joint_position_index})
    if p == "vqa":
        out["vqa.logits"] = model.vqa_logits(image, text_ids, text_masks)
        return out
    for kind, embed, args in (("image", model.image_embeds, (image,)), ("text", model.text_embeds, (text_ids, text_masks))):
        out[f"irtr.{kind}_embeds"] = embed(*args)
        points = {f"irtr.{kind}.hidden.layer{i}": f"blocks.{i}" for i in range(len(model.blocks))}
        tokens, key_mask = (model.embed_image(image), None) if kind == "image" else (model.embed_text(text_ids), text_masks)
        with recording(model, points) as encoded:
            out[f"irtr.{kind}.final_norm"] = model.encode(tokens, kind, key_mask)
        out.update(encoded)
        biases = model.position_biases(model.position_index(kind))
        out[f"irtr.{kind}.rel_pos_bias.layer0"] = gather_heads(biases[0], model)
    out["irtr.similarity"] = out["irtr.image_embeds"] @ out["irtr.text_embeds"].T
    out["irtr.logits_per_image"] = out["irtr.similarity"] * model.logit_scale.exp()
    return out


def blip_outputs(model, images, text_input_ids, text_attention_mask):
    from npu_models.models.blip.model import UNSELECTED_SCORE, rerank
    from npu_models.tasks import score_matrix
    vit, bert = model.visual_encoder, model.text_encoder
    ids, mask = text_input_ids, text_attention_mask
    points = {"vit.patch_embed_out": "patch_embed", "vit.embed_out": "blocks.0:input",
              **{f"vit.block{i}_out": f"blocks.{i}" for i in range(len(vit.blocks))}}
    with recording(vit, points) as out:
        image_feat = out["image_feat"] = model.image_features(images)
    out["image_embed"] = model.image_embeds(image_feat)
    points = {"text.embeddings_out": "embeddings", **{f"text.layer{i}_out": f"blocks.{i}" for i in range(len(bert.blocks))}}
    with recording(bert, points) as text:
        bert.forward_features(ids, mask)
    out["text_embed"] = model.text_embeds(ids, mask)
    out.update(text, text_last_hidden_state=text[f"text.layer{len(bert.blocks) - 1}_out"])
    sims = out["itc_sims"] = out["image_embed"] @ out["text_embed"].T

    texts, images_n = len(ids), len(images)
    with recording(bert, {"itm.layer0_selfattn_out_img0": "blocks.0.cross_attn:input",
                          "itm.layer0_crossattn_out_img0": "blocks.0.mlp:input"}) as layer0:
        model.itm_logits(image_feat[:1].expand(texts, -1, -1), ids, mask)  # layer 0 for image 0, step by step
    out.update(layer0)
    pairs = image_feat.repeat_interleave(texts, dim=0), ids.repeat(images_n, 1), mask.repeat(images_n, 1)
    logits = model.itm_logits(*pairs).view(images_n, texts, 2)
    last = bert.forward_features(model.with_enc_token(pairs[1]), pairs[2], context=pairs[0])
    out["itm.last_hidden_state"] = last.view(images_n, texts, *last.shape[1:])
    out["itm_logits"], out["itm_score"], out["itm_prob"] = logits, logits[..., 1], logits.softmax(dim=-1)[..., 1]
    k = min(model.config.k_test, texts, images_n)
    i2t = rerank(model, sims, image_feat, ids, mask, "i2t", range(images_n), k)
    t2i = rerank(model, sims, image_feat, ids, mask, "t2i", range(texts), k)
    out["topk_i2t_idx"], out["topk_t2i_idx"] = i2t[0], t2i[0]
    out["score_matrix_i2t"] = score_matrix(i2t, (images_n, texts), UNSELECTED_SCORE)
    out["score_matrix_t2i"] = score_matrix(t2i, (texts, images_n), UNSELECTED_SCORE)
    return out


def vilbert_outputs(model, box_features, box_coordinates, box_mask, token_ids, mask, type_ids):
    last = len(model.co_layers) - 1
    points = {"text_embeddings": "text_embeddings", "image_embeddings": "image_embeddings",
              **{f"text_layer_{i}_out": f"text_layers.{i}" for i in range(len(model.text_layers))},
              **{f"image_layer_{i}_out": f"image_layers.{i}" for i in range(len(model.image_layers))},
              **{f"coattn_{k}_{stream}_out": f"co_layers.{k}.{stream}" for k in range(last + 1)
                 for stream in ("text", "image")}}
    with recording(model, points) as out:  # layers after the last co-attention never run: nothing recorded
        out["logits"] = model(box_features, box_coordinates, box_mask, token_ids, mask, type_ids)
    out["encoded_text_final"], out["encoded_image_final"] = out[f"coattn_{last}_text_out"], out[f"coattn_{last}_image_out"]
    out["pooled_text"], out["pooled_image"], out["pooled_fused"] = model.fuse(out["encoded_text_final"],
                                                                              out["encoded_image_final"])
    out["probs"] = torch.sigmoid(out["logits"])
    return out


FIXTURE_OUTPUTS = {"bert": bert_outputs, "vit": vit_outputs, "vlmo": vlmo_outputs, "blip": blip_outputs,
                   "vilbert": vilbert_outputs}


def find_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in a fixture dir: model directories (config.json + weights) and weight files."""
    found = []
    for path in sorted([directory, *directory.iterdir()]):
        if path.is_dir():
            has_weights = any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir())
            if is_converted_dir(path) or (has_weights and (path / "config.json").is_file() and path != directory):
                found.append(path)
        elif path.name.endswith(WEIGHT_SUFFIXES) and path.name not in FIXTURE_FILES:
            found.append(path)
    return found


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float) -> dict:
    row = {"name": name, "shape": list(reference.shape), "tolerance": f"{atol:g} + {rtol:g}*|ref|"}
    if tuple(ours.shape) != tuple(reference.shape):
        return {**row, "max_abs_diff": float("inf"), "ok": False, "note": f"our shape {list(ours.shape)}"}
    ours, reference = ours.detach().double().cpu(), reference.double()
    diff = (ours - reference).abs()
    ok = bool(torch.all(diff <= atol + rtol * reference.abs()))
    return {**row, "max_abs_diff": diff.max().item() if diff.numel() else 0.0, "ok": ok, "note": ""}


def verify(model_name: str, directory, device="cpu", dtype="fp32", atol=None, rtol=None, tp=1) -> list[dict]:
    """One row per compared tensor (per checkpoint); raises UserError when nothing can be compared.
    atol/rtol default to DEFAULT_TOLERANCE for the dtype."""
    directory = Path(directory)
    entry = registry.get_entry(model_name)
    for name in ("inputs.safetensors", "outputs.safetensors"):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; a fixture directory holds checkpoint(s), "
                            "inputs.safetensors and outputs.safetensors.")
    inputs, references = load_file(str(directory / "inputs.safetensors")), read_state_dict(directory / "outputs.safetensors")
    checkpoints = find_checkpoints(directory)
    if not checkpoints:
        raise UserError(f"no checkpoint found in {directory}: expected a model directory or weight file "
                        f"({', '.join(WEIGHT_SUFFIXES)}).")
    device = runtime.resolve_device(device)
    dtype = runtime.parse_dtype(dtype, device)
    group = parallel.init_tensor_parallel(tp, device.type)
    default_atol, default_rtol = DEFAULT_TOLERANCE[dtype]
    atol, rtol = default_atol if atol is None else atol, default_rtol if rtol is None else rtol
    rows = []
    for checkpoint in checkpoints:
        model = registry.build_model(entry, checkpoint, tp=group)
        model = runtime.prepare_model(model, parallel.local_device(device), dtype)
        outputs_of = FIXTURE_OUTPUTS[entry.short_name]
        accepted = inspect.signature(outputs_of).parameters
        with torch.no_grad():  # fixtures may carry extra inputs (raw images for preprocessing checks)
            produced = outputs_of(model, **{k: runtime.to_model_input(v, device, dtype)
                                            for k, v in inputs.items() if k in accepted})
        prefix = f"{checkpoint.name}/" if len(checkpoints) > 1 else ""
        for name, reference in references.items():
            if name in produced:
                rows.append(compare(prefix + name, produced[name], reference, atol, rtol))
    if not rows:
        raise UserError(f"our {entry.name} model produces none of the tensors in {directory / 'outputs.safetensors'} "
                        f"({', '.join(references)}).")
    return rows


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'tensor':<{width}}  {'shape':<18} {'max abs diff':>12}  {'tolerance':<20} result"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {str(r['shape']):<18} {r['max_abs_diff']:>12.3e}  "
                     f"{r['tolerance']:<20} {'PASS' if r['ok'] else 'FAIL'} {r['note']}".rstrip())
    passed = sum(r["ok"] for r in rows)
    lines.append(f"verify: {passed}/{len(rows)} tensors within tolerance, "
                 f"max abs diff {max(r['max_abs_diff'] for r in rows):.1e}")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="fixture directory in the reference layout")
    parser.add_argument("--model", required=True, help="short name (bert) or registry name")
    parser.add_argument("--device", default="cpu", help="auto | npu[:N] | cuda[:N] | cpu (default cpu)")
    parser.add_argument("--dtype", default="fp32", help="fp32 (default) | fp16 | bf16")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default: 1e-5 fp32, 5e-2 bf16, 1e-2 fp16)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default: as --atol)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (run under torchrun "
                        "--nproc_per_node N); every rank checks the full outputs")
    args = parser.parse_args(argv)
    rows = verify(args.model, args.directory, args.device, args.dtype, args.atol, args.rtol, args.tp)
    if parallel.is_main_process():
        print(format_rows(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
