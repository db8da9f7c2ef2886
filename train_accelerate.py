"""Fine-tune (or train from scratch) a FAS-VLA on a LeRobot dataset with Accelerate.

    accelerate launch train_accelerate.py --dataset lerobot/libero --output_dir runs/libero --vlm \\
        HuggingFaceTB/SmolVLM2-500M-Video-Instruct
    accelerate launch train_accelerate.py --dataset <folder> --output_dir runs/tiny --preset tiny --steps 300
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py ...    # 2 processes, DDP (gloo on CPUs)
    accelerate launch train_accelerate.py ... --resume_from_checkpoint latest  # exact resume

Initialisation: `--model <FAS-VLA folder or Hub id>`, or a new model from `--preset {tiny,full}` whose backbone
comes from `--vlm <SmolVLM2 folder or Hub id>` when given (random otherwise). The run writes
`<output_dir>/checkpoints/step_N` (Accelerate state), `metrics.jsonl`, TensorBoard logs, `summary.json` and the
final `<output_dir>/model`, which loads with AutoModel / AutoProcessor (trust_remote_code=True).
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from configuration_fasvla import OBJECTIVES, TRAJECTORY_ORIGINS
from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.distributed import cpu_process_group_needed
from fasvla.data.samples import TrainingCollator, TrajectorySamples, split_episodes
from fasvla.data.stats import dataset_norm_stats
from fasvla.state_response import DEFAULT_RIDGE
from fasvla.tiny import tiny_tokenizer
from fasvla.training import (FREEZE_MODES, fit_feedback_matrix, freeze, latest_checkpoint, load_processor,
                             load_smolvlm_backbone, lr_multiplier, make_optimizer, new_config, parameter_checksum)
from modeling_fasvla import FasVLAForActionPrediction
from processing_fasvla import FasVLAProcessor

SMOLVLM2 = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="LeRobot dataset: Hub id or local folder (v2.1 or v3.0)")
    data.add_argument("--revision", default=None, help="Hub revision of the dataset")
    data.add_argument("--cameras", nargs="+", default=None,
                      help="dataset camera keys in the model's camera order, each optionally 'key=model_camera' "
                           "(default: the model's cameras, or every dataset camera for a new model)")
    data.add_argument("--state_key", default="observation.state")
    data.add_argument("--action_key", default="action")
    data.add_argument("--val_fraction", type=float, default=0.05, help="episodes held out for the validation loss")
    data.add_argument("--num_workers", type=int, default=2)
    model = p.add_argument_group("model")
    model.add_argument("--model", default=None, help="start from this FAS-VLA folder or Hub id")
    model.add_argument("--preset", choices=["tiny", "small", "full"], default="full",
                       help="size of a new model (small: trains from scratch on a CPU, with --freeze full)")
    model.add_argument("--vlm", default=None, help="SmolVLM2 folder or Hub id for a new model's backbone")
    model.add_argument("--tokenizer", default=SMOLVLM2, help="tokenizer of a new full-size model without --vlm")
    model.add_argument("--objective", choices=OBJECTIVES, default="stream_joint", help="objective of a new model")
    model.add_argument("--chunk_size", type=int, default=None, help="H of a new model (default: the preset's)")
    model.add_argument("--num_flow_queries", type=int, default=None, help="flow-time queries per prefix")
    model.add_argument("--freeze", choices=FREEZE_MODES, default="expert_only")
    trajectory = p.add_argument_group("streaming trajectory of a new model (DESIGN.md section 3b; defaults: the "
                                      "first version)")
    trajectory.add_argument("--absolute_action_dims", type=int, nargs="*", default=[],
                            help="action dimensions that are levels (LIBERO's gripper: 6)")
    trajectory.add_argument("--trajectory_origin", choices=TRAJECTORY_ORIGINS, default="episode")
    trajectory.add_argument("--center_state", action="store_true", help="states normalised as (s - mean) / std")
    trajectory.add_argument("--feedback_kappa", type=float, default=0.0,
                            help="kappa_fb of feedback-consistent stabilisation (G is fitted on the dataset)")
    trajectory.add_argument("--kappa_a", type=float, default=None, help="decay of the action noise (default kappa)")
    trajectory.add_argument("--feedback_ridge", type=float, default=DEFAULT_RIDGE, help="ridge of G's fit")
    trajectory.add_argument("--no_prefix_state_gate", action="store_true",
                            help="the prefix's state token ungated, as in SmolVLA (default: tanh(g), g from 0)")
    trajectory.add_argument("--max_observation_delay", type=int, default=None,
                            help="train under inference delay: each sample's prefix from frame t - d, d uniform in "
                                 "{0..D}, its trajectory from t (default: the model's, 0 for a new one)")
    optim = p.add_argument_group("optimisation (SmolVLA's presets)")
    optim.add_argument("--steps", type=int, default=30_000, help="optimizer steps")
    optim.add_argument("--batch_size", type=int, default=8, help="per process and per accumulation step")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--lr", type=float, default=1e-4)
    optim.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    optim.add_argument("--eps", type=float, default=1e-8)
    optim.add_argument("--weight_decay", type=float, default=1e-10)
    optim.add_argument("--grad_clip", type=float, default=10.0)
    optim.add_argument("--warmup_steps", type=int, default=1_000)
    optim.add_argument("--decay_steps", type=int, default=None, help="end of the cosine (default: --steps)")
    optim.add_argument("--decay_lr", type=float, default=2.5e-6)
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                       help="default: accelerate's configuration")
    optim.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--log_every", type=int, default=10)
    run.add_argument("--eval_every", type=int, default=500)
    run.add_argument("--val_batches", type=int, default=8, help="batches of the validation loss")
    run.add_argument("--checkpoint_every", type=int, default=1_000)
    run.add_argument("--keep_checkpoints", type=int, default=2)
    run.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    run.add_argument("--report_to", default="tensorboard", help="Accelerate tracker ('tensorboard', 'wandb', 'none')")
    run.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="push the final model to the Hub")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every", "eval_every",
                 "checkpoint_every", "keep_checkpoints", "val_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.model and args.vlm:
        p.error("--model and --vlm both give the backbone: use one")
    return args


def camera_mapping(args, dataset: LeRobotDataset, model_cameras: list[str] | None) -> tuple[list[str], list[str]]:
    """(dataset keys, model camera names) in the model's camera order."""
    if args.cameras:
        pairs = [c.split("=", 1) if "=" in c else (c, c) for c in args.cameras]
        keys, names = [k for k, _ in pairs], [n for _, n in pairs]
    elif model_cameras is None:
        keys = names = dataset.camera_keys
    else:
        keys = names = model_cameras
    if model_cameras is not None and names != model_cameras:
        raise ValueError(f"--cameras gives model cameras {names}, but the model expects {model_cameras} in this "
                         "order; map dataset keys onto them with 'dataset_key=model_camera'")
    return keys, names


def build_model(args, dataset: LeRobotDataset):
    """The model and processor to train: an existing FAS-VLA, or a new one (optionally on a SmolVLM2 backbone)."""
    if args.model:
        model = FasVLAForActionPrediction.from_pretrained(args.model)
        processor = load_processor(args.model)
        keys, _ = camera_mapping(args, dataset, model.config.camera_names)
        return model, processor, keys
    keys, names = camera_mapping(args, dataset, None)
    fields = {"objective": args.objective, "camera_names": names,
              "state_dim": dataset.features[args.state_key]["shape"][0],
              "action_dim": dataset.features[args.action_key]["shape"][0]}
    fields.update({k: getattr(args, k) for k in ("chunk_size", "num_flow_queries") if getattr(args, k)})
    fields.update(absolute_action_dims=list(args.absolute_action_dims), trajectory_origin=args.trajectory_origin,
                  center_state=args.center_state, feedback_kappa=args.feedback_kappa, kappa_a=args.kappa_a,
                  prefix_state_gate=not args.no_prefix_state_gate,
                  feedback_matrix=placeholder_feedback_matrix(fields) if args.feedback_kappa > 0 else None)
    if "chunk_size" in fields:
        fields["n_action_steps"] = fields["chunk_size"]
    config = new_config(args.preset, args.vlm, **fields)
    if args.preset in ("tiny", "small") and not args.vlm:  # a BPE of its own, trained on the dataset's tasks
        tokenizer = tiny_tokenizer(config.text_config.vocab_size, tasks=list(dataset.tasks.values()))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.vlm or args.tokenizer)
    model = FasVLAForActionPrediction(config)
    if args.vlm:
        load_smolvlm_backbone(model, args.vlm)
    return model, FasVLAProcessor.from_config(config, tokenizer), keys


def placeholder_feedback_matrix(fields: dict) -> list[list[float]]:
    """Zeros of G's shape, so that the config validates until `fit_feedback_matrix` replaces them."""
    return [[0.0] * fields["state_dim"] for _ in range(fields["action_dim"])]


def resume(requested: str | None, checkpoint_dir: Path, accelerator) -> int:
    """Load the requested Accelerate state (a folder, or 'latest'); returns the step to continue from."""
    if requested is None:
        return 0
    checkpoint = latest_checkpoint(checkpoint_dir) if requested == "latest" else Path(requested)
    if checkpoint is None:
        accelerator.print(f"no complete checkpoint in {checkpoint_dir}: starting at step 0")
        return 0
    if not (checkpoint / "COMPLETE").is_file():
        raise ValueError(f"--resume_from_checkpoint {requested!r}: {checkpoint} is not a complete checkpoint")
    accelerator.load_state(str(checkpoint))
    step = json.loads((checkpoint / "progress.json").read_text())["step"]
    accelerator.print(f"resumed from {checkpoint} at step {step}")
    return step


def training_record(out, optimizer, accelerator) -> dict[str, float]:
    """The loss terms of the last batch, averaged over the processes, and the learning rate."""
    terms = accelerator.reduce(torch.stack([out.loss, out.action_loss, out.state_loss]).detach(), "mean")
    record = dict(zip(("train/loss", "train/action_loss", "train/state_loss"), terms.tolist()))
    return record | {"lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def validation_loss(model, loader, batches: int, accelerator, seed: int) -> dict[str, float]:
    """Mean loss terms over the first `batches` validation batches, with the same noise at every evaluation."""
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)
    count = 0
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for index, batch in enumerate(loader):
            if index == batches:
                break
            out = model(**batch)
            totals += torch.stack([out.loss, out.action_loss, out.state_loss]).float()
            count += 1
    model.train()
    totals = accelerator.reduce(totals / max(count, 1), "mean")
    return dict(zip(("val/loss", "val/action_loss", "val/state_loss"), totals.tolist()))


def save_checkpoint(accelerator, folder: Path, step: int, keep: int):
    """Accelerate state (model, optimizer, RNGs) + the step; `COMPLETE` is written last, so a crash mid-save
    leaves a folder that `latest` ignores."""
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / "progress.json").write_text(json.dumps({"step": step}))
        (folder / "COMPLETE").touch()
        finished = sorted(p for p in folder.parent.glob("step_*") if (p / "COMPLETE").is_file())
        for old in finished[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    set_seed(args.seed, device_specific=True)  # each process draws its own flow noise

    dataset = LeRobotDataset.open(args.dataset, args.revision)
    model, processor, camera_keys = build_model(args, dataset)
    dataset.check(camera_keys, args.state_key, args.action_key)  # fail now, not after an hour of training
    stats, computed = dataset_norm_stats(dataset, args.state_key, args.action_key)
    model.set_norm_stats(stats)
    if model.config.feedback_kappa > 0:  # G in the units of these statistics
        model.set_feedback_matrix(fit_feedback_matrix(model, dataset, args.state_key, args.action_key,
                                                       args.feedback_ridge))
    if args.max_observation_delay is not None:
        model.config.max_observation_delay = args.max_observation_delay
    train_loader, val_loader = make_loaders(args, dataset, model.config, processor, camera_keys)

    trainable = freeze(model, args.freeze)
    optimizer = make_optimizer(model, args.lr, tuple(args.betas), args.eps, args.weight_decay)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    step = resume(args.resume_from_checkpoint, Path(args.output_dir) / "checkpoints", accelerator)
    accelerator.init_trackers("fasvla", config={k: str(v) for k, v in vars(args).items()})
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        accelerator.print(f"{len(trainable)} trainable tensors ({args.freeze}); {len(train_loader.dataset)} train / "
                          f"{len(val_loader.dataset) if val_loader else 0} val samples; statistics computed from the "
                          f"data: {computed or 'none'}")

    first_step, started = step, time.perf_counter()
    step = train(args, accelerator, model, optimizer, train_loader, val_loader, step)
    save_model(args, accelerator, model, processor, len(trainable), step, step - first_step,
               time.perf_counter() - started)
    accelerator.end_training()
    if torch.distributed.is_initialized():  # without it, a rank whose peers have exited can hang in gloo's teardown
        torch.distributed.destroy_process_group()


def make_accelerator(args) -> Accelerator:
    return Accelerator(
        cpu=cpu_process_group_needed(), gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to, project_dir=str(args.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def make_loaders(args, dataset: LeRobotDataset, config, processor, camera_keys: list[str]):
    """The training loader (shuffled, whole batches, observations delayed as `config.max_observation_delay` says)
    and the validation loader (None without validation episodes; no delay, so that validation losses compare).

    The loaders' own generator keeps the creation of their iterators (epochs, resumes) off the global RNG, which
    draws the flow noise: a resumed run then draws exactly the noise of an uninterrupted one."""
    train_episodes, val_episodes = split_episodes(len(dataset.episodes), args.val_fraction, args.seed)

    def loader(episodes, max_observation_delay=0, **options):
        samples = TrajectorySamples(dataset, config.chunk_size, camera_keys, args.state_key, args.action_key, episodes,
                                    max_observation_delay, args.seed)
        return torch.utils.data.DataLoader(
            samples, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=TrainingCollator(processor),
            generator=torch.Generator().manual_seed(args.seed), **options)

    train_loader = loader(train_episodes, config.max_observation_delay, shuffle=True, drop_last=True)
    if len(train_loader) == 0:
        raise ValueError(f"--batch_size {args.batch_size} is larger than the {len(train_loader.dataset)} training "
                         "samples")
    return train_loader, loader(val_episodes) if val_episodes else None


def train(args, accelerator, model, optimizer, train_loader, val_loader, step: int) -> int:
    """Optimizer steps from `step` to `args.steps`, logging, validating and checkpointing on the way."""
    batches_done = step * args.gradient_accumulation_steps
    progress = tqdm(total=args.steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    model.train()
    while step < args.steps:
        epoch, position = divmod(batches_done, len(train_loader))
        train_loader.set_epoch(epoch)  # the same shuffling for the same epoch, also after a resume
        train_loader.dataset.set_epoch(epoch)  # and the same observation delays
        batches = accelerator.skip_first_batches(train_loader, position) if position else train_loader
        for batch in batches:
            batches_done += 1
            out = accumulate_batch(args, accelerator, model, optimizer, batch, step)
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            after_step(args, accelerator, model, optimizer, val_loader, out, step, progress)
            if step == args.steps:
                break
    progress.close()
    return step


def accumulate_batch(args, accelerator, model, optimizer, batch: dict, step: int):
    """Forward and backward of one batch; the optimizer steps when the accumulated gradient is complete."""
    with accelerator.accumulate(model):
        out = model(**batch)
        accelerator.backward(out.loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_multiplier(step, args.warmup_steps, args.decay_steps or args.steps,
                                                      args.lr, args.decay_lr)
        optimizer.step()
        optimizer.zero_grad()
    return out


def after_step(args, accelerator, model, optimizer, val_loader, out, step: int, progress) -> None:
    """The training record, the validation loss and the checkpoint that fall on optimizer step `step`."""
    record = {}
    if step % args.log_every == 0 or step == args.steps:
        record.update(training_record(out, optimizer, accelerator))
        progress.set_postfix({k.split("/")[-1]: f"{v:.4f}" for k, v in record.items() if "loss" in k})
    if val_loader is not None and (step % args.eval_every == 0 or step == args.steps):
        record.update(validation_loss(model, val_loader, args.val_batches, accelerator, args.seed))
    if record:
        accelerator.log(record, step=step)
        if accelerator.is_main_process:
            with (Path(args.output_dir) / "metrics.jsonl").open("a") as f:  # flushed at every record
                f.write(json.dumps({"step": step, **record}) + "\n")
    if step % args.checkpoint_every == 0 or step == args.steps:
        save_checkpoint(accelerator, Path(args.output_dir) / "checkpoints" / f"step_{step:07d}", step,
                        args.keep_checkpoints)


def save_model(args, accelerator, model, processor, trainable: int, step: int, steps_run: int, elapsed: float) -> None:
    """`<output_dir>/model` and `summary.json`, once every process holds the same weights (and the Hub copy)."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    checksums = accelerator.gather(torch.tensor([parameter_checksum(unwrapped)], device=accelerator.device))
    ranks_agree = bool(torch.all(checksums == checksums[0]))
    if not ranks_agree:
        raise RuntimeError(f"the processes ended with different weights: checksums {checksums.tolist()}")
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    unwrapped.save_pretrained(output_dir / "model")
    processor.save_pretrained(output_dir / "model")
    samples = steps_run * args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    summary = {"steps": step, "processes": accelerator.num_processes, "wall_s": elapsed,
               "samples_per_s": samples / elapsed if elapsed else None, "ranks_agree": ranks_agree,
               "parameter_checksum": checksums[0].item(), "trainable_tensors": trainable,
               "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
               else None}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.print(f"saved {output_dir / 'model'}; {json.dumps(summary)}")
    if args.push_to_hub:
        unwrapped.push_to_hub(args.push_to_hub)
        processor.push_to_hub(args.push_to_hub)


if __name__ == "__main__":
    main()
