"""Train a tiny MiniCPM-V 4.6 vision-language model on generated scenes, on a CPU, in about 20 minutes.

The model is the real `MiniCPMV4_6ForConditionalGeneration` at tiny widths: a 4-layer SigLIP tower
(hidden 128, MLP 200: not a multiple of 32, so every 32-block mmproj type exercises the zero padding)
with the 70x70 position table libmtmd hardcodes, the window-attention merger after layer 1, and a
4-layer Qwen3.5 LM (hidden 128). Scenes (`examples/scenes.py`): 1-3 coloured shapes in a 2x2 grid and,
half the time, a small printed word; one question per sample, a one- or two-word answer.

Why this recipe: everything is trained from scratch, jointly. The answer loss alone (one or two tokens
per image) teaches colour and count but leaves shape and place at the answer prior after hundreds of
steps, so a linear head on every visual token (what shape, colour and word fill that token's grid
cell) adds a dense loss that makes the tower see within minutes; the head is dropped, not saved. The
tower gets a higher learning rate than the LM for the same reason. Batches alternate 16x and 4x modes
so that one checkpoint serves both mmproj files. A cosine schedule that ends at the step count or the
time budget, whichever comes first, bounds the run.

    nice -n 10 python examples/train_tiny_vlm.py          # writes examples/minicpmv46-tiny-vlm/ (bf16)

The checkpoint's README.md records the run: steps, minutes, held-out accuracy per question kind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import scenes  # noqa: E402 - beside this script

TEXT = dict(hidden_size=128, intermediate_size=256)
VISION = dict(hidden_size=128, intermediate_size=200, num_hidden_layers=4, num_attention_heads=2)
INSERT_LAYER_ID = 1
IMAGE_PROCESSOR = dict(scale_resolution=scenes.SIZE)
VOCAB_SIZE = 300  # the 256 byte symbols and 44 merges: enough for the question and answer words

README = """---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
---

# minicpmv46-tiny-vlm

A tiny MiniCPM-V 4.6 (the real `MiniCPMV4_6ForConditionalGeneration` classes) trained from scratch on a
CPU on generated scenes (`examples/scenes.py`): 224x224 images with 1-3 coloured shapes (circle, square,
triangle; red, green, blue, yellow) in a 2x2 grid and, half the time, a small printed word (CAT, DOG,
SUN, MAP, BOX, KEY). It answers, in one or two words:

- How many shapes are there? (one, two, three)
- What colour is the SHAPE? / Where is the SHAPE? (top left, ...) / What shape is in the PLACE?
- What word is written? (the word, or none) / Where is the word?

It knows nothing else. Vision: 4 SigLIP layers, hidden {vh}, MLP {vi}, 70x70 position table, window
merger after layer {ins}; LM: Qwen3.5 [lin, lin, lin, full], hidden {th}; {n_params:,} parameters.

- Training: {steps} AdamW steps of {batch} scenes (peak lr {lr}, warm-up then cosine), 16x and 4x
  batches alternating, seed {seed}, {threads} threads: {minutes:.1f} minutes wall clock.
- Held-out accuracy (transformers, bf16 weights, greedy = teacher-forced argmax over the answer and
  `<|im_end|>`, {n_eval} scenes from seed {held_seed}): 16x {acc16:.1%}, 4x {acc4:.1%}.
  Per question kind: {kinds}.
- A blank image scores {blank16:.1%} (16x) / {blank4:.1%} (4x) on the same questions: the answer prior.
- Train loss, answers plus the per-token grid-cell loss (mean of {log_every} steps up to step N): {curve}.

Made with (from the repository root, torch {torch}, transformers {transformers}):

    {command}
"""


def make_processor(tokenizer):
    from transformers import MiniCPMV4_6Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    from tests.fixtures.tiny_checkpoint import _IMAGE_PROCESSOR, CHAT_TEMPLATE, stub_video_processor

    ip = MiniCPMV4_6ImageProcessorPil(**{**_IMAGE_PROCESSOR, **IMAGE_PROCESSOR})
    return MiniCPMV4_6Processor(ip, stub_video_processor(), tokenizer, chat_template=CHAT_TEMPLATE)


def prompt_text(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_batch(processor, samples, mode: str, render=scenes.render):
    """Processor inputs for (scene, question, answer) samples, labels on the answer and <|im_end|> only."""
    tok = processor.tokenizer
    texts = [prompt_text(processor, q) + a + "<|im_end|>" for _, q, a in samples]
    images = [[render(s)] for s, _, _ in samples]
    inputs = processor(text=texts, images=images, downsample_mode=mode, padding=True, return_tensors="pt")
    labels = inputs["input_ids"].clone()
    labels[:] = -100
    for i, (_, _, a) in enumerate(samples):  # left padding: every answer ends the row
        n = len(tok(a + "<|im_end|>")["input_ids"])
        labels[i, -n:] = inputs["input_ids"][i, -n:]
    return inputs, labels


def forward(model, inputs, labels, mode: str):
    return model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        target_sizes=inputs["target_sizes"],
        downsample_mode=mode,
        labels=labels,
    )


def accuracy(model, processor, samples, mode: str, batch: int, render=scenes.render) -> list[bool]:
    """Per sample: every answer token (and <|im_end|>) is the argmax given the ones before it."""
    import torch

    right = []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            inputs, labels = encode_batch(processor, samples[i : i + batch], mode, render)
            logits = forward(model, inputs, labels, mode).logits
            pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
            mask = gold != -100
            right += ((pred == gold) | ~mask).all(-1).tolist()
    return right


def cell_targets(scene) -> list[tuple[int, int, int]]:
    """Per grid cell (in PLACES order): shape, colour and word class, 0 meaning none."""
    out = []
    for place in scenes.PLACES:
        item = next((it for it in scene.items if it.place == place), None)
        shape = 1 + scenes.SHAPES.index(item.shape) if item else 0
        colour = 1 + list(scenes.COLOURS).index(item.colour) if item else 0
        word = 1 + scenes.WORDS.index(scene.word) if scene.word_place == place else 0
        out.append((shape, colour, word))
    return out


AUX_CLASSES = (1 + len(scenes.SHAPES), 1 + len(scenes.COLOURS), 1 + len(scenes.WORDS))


def aux_loss(head, features, samples):
    """Cross-entropy of the head's shape/colour/word guess for each visual token's grid cell.

    `features` is the merger's per-image output: n*n tokens in raster order, so token (r, c) lies in
    cell (2r // n, 2c // n) of the 2x2 grid."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    for feats, (scene, _, _) in zip(features, samples):
        n = math.isqrt(feats.shape[0])
        cells = cell_targets(scene)
        target = torch.tensor([cells[(2 * r // n) * 2 + 2 * c // n] for r in range(n) for c in range(n)])
        logits = head(feats).split(AUX_CLASSES, dim=-1)
        total = total + sum(F.cross_entropy(lo, target[:, k]) for k, lo in enumerate(logits))
    return total / len(samples)


def lr_at(step: int, steps: int, peak: float, warmup: int, time_frac: float = 0.0) -> float:
    """Linear warm-up, then cosine to 5 % over the steps or the time budget, whichever runs out first."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, max((step - warmup) / max(1, steps - warmup), time_frac))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "minicpmv46-tiny-vlm")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vision-lr-scale", type=float, default=1.5, help="the tower's and merger's lr over the LM's")
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-token grid-cell loss")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval", type=int, default=256, help="held-out scenes scored at the end, per mode")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=17.0,
        help="time budget: the cosine ends at the steps or at this many minutes, whichever is first",
    )
    args = parser.parse_args(argv)
    first, last = args.seed * 100_000, args.seed * 100_000 + args.steps * args.batch
    if first < scenes.HELD_OUT_SEED + args.eval and last > scenes.HELD_OUT_SEED:
        parser.error(f"--seed {args.seed}: its training scenes would include held-out ones; use 11 or more")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new or empty directory")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from tests.fixtures.tiny_checkpoint import build_tokenizer, new_model, save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(scenes.corpus() + ["user assistant system"] * 4, VOCAB_SIZE)
    processor = make_processor(tokenizer)
    model = new_model(tokenizer, TEXT, args.seed, VISION, INSERT_LAYER_ID)
    n_params = sum(p.numel() for p in model.parameters())
    head = torch.nn.Linear(TEXT["hidden_size"], sum(AUX_CLASSES))
    captured = {}
    model.model.merger.register_forward_hook(lambda _m, _i, out: captured.__setitem__("features", out))
    groups = {}  # (is vision, decays) -> params; no decay on norms, biases and the position table
    for name, p in [*model.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]:
        vision = not name.startswith(("model.language_model", "lm_head"))
        groups.setdefault((vision, p.ndim >= 2 and p.shape[0] != 4900), []).append(p)
    params = [p for ps in groups.values() for p in ps]
    opt = torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": 0.05 if dec else 0.0, "scale": args.vision_lr_scale if vis else 1.0}
            for (vis, dec), ps in groups.items()
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    print(f"{n_params:,} parameters, vocab {len(tokenizer)}", flush=True)
    t0, losses, done = time.perf_counter(), [], 0
    model.train()
    for step in range(args.steps):
        time_frac = (time.perf_counter() - t0) / 60 / args.max_minutes
        if time_frac >= 1:
            print(f"time limit: stopping after {step} steps", flush=True)
            break
        mode = ("16x", "4x")[step % 2]
        samples = [scenes.sample(args.seed * 100_000 + step * args.batch + i) for i in range(args.batch)]
        inputs, labels = encode_batch(processor, samples, mode)
        for group in opt.param_groups:
            group["lr"] = group["scale"] * lr_at(step, args.steps, args.lr, args.warmup, time_frac)
        loss = forward(model, inputs, labels, mode).loss
        loss = loss + args.aux_weight * aux_loss(head, captured["features"], samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if done % args.log_every == 0 or step == 0:
            window = losses[-args.log_every :]
            mean = sum(window) / len(window)
            print(f"step {done:5d}  loss {mean:.3f}  {time.perf_counter() - t0:6.1f} s", flush=True)
    minutes = (time.perf_counter() - t0) / 60

    model.eval()
    with torch.no_grad():  # evaluate what is saved: the bf16-rounded weights
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    held = scenes.held_out(args.eval)
    acc, kinds = {}, {}
    for mode in ("16x", "4x"):
        right = accuracy(model, processor, held, mode, args.batch)
        acc[mode] = sum(right) / len(right)
        for (_, q, _), ok in zip(held, right):
            kinds.setdefault((mode, q.split(" the ")[0].split(" are")[0]), []).append(ok)
    blank = {}  # the answer prior: the same questions about a blank image
    for mode in ("16x", "4x"):
        right = accuracy(model, processor, held, mode, args.batch, render=lambda _scene: scenes.blank())
        blank[mode] = sum(right) / len(right)
    kind_text = "; ".join(f"{k[1]} ({k[0]}) {sum(v)}/{len(v)}" for k, v in sorted(kinds.items()))
    print(f"trained {done} steps in {minutes:.1f} min; held-out accuracy 16x {acc['16x']:.3f}, 4x {acc['4x']:.3f}")
    print(f"blank image: 16x {blank['16x']:.3f}, 4x {blank['4x']:.3f}")
    print(kind_text)

    every = min(args.log_every, done)
    marks = sorted({*range(max(every, done // 8), done + 1, max(every, done // 8)), done})
    curve = ", ".join(f"{sum(losses[m - every : m]) / every:.3f} at {m}" for m in marks)
    readme = README.format(
        vh=VISION["hidden_size"],
        vi=VISION["intermediate_size"],
        ins=INSERT_LAYER_ID,
        th=TEXT["hidden_size"],
        n_params=n_params,
        steps=done,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        minutes=minutes,
        n_eval=args.eval,
        held_seed=scenes.HELD_OUT_SEED,
        acc16=acc["16x"],
        acc4=acc["4x"],
        blank16=blank["16x"],
        blank4=blank["4x"],
        kinds=kind_text,
        log_every=every,
        curve=curve,
        torch=torch.__version__,
        transformers=transformers.__version__,
        command=shlex.join(["python", "examples/train_tiny_vlm.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    save_checkpoint(model, tokenizer, args.out, dtype="bfloat16", readme=readme, image_processor=IMAGE_PROCESSOR)
    (args.out / "train_result.json").write_text(
        json.dumps({"steps": done, "minutes": round(minutes, 2), "accuracy": acc, "blank_accuracy": blank}, indent=2) + "\n"
    )
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
