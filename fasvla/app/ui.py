"""The replay app: callbacks (plain methods of `ReplayApp`, callable without a browser) and their Gradio layout.

    app = ReplayApp(RolloutCatalog.scan(["examples/libero_rollouts"]), runner=None)
    blocks = build_blocks(app)
    blocks.launch(server_name="127.0.0.1", allowed_paths=app.catalog.allowed_paths)
"""

import functools
import inspect

import gradio as gr
import numpy as np

from fasvla.app.overview import success_table
from fasvla.app.plots import comparison_figure, episode_figure, success_figure
from fasvla.app.rollouts import EpisodeData, RolloutCatalog, RolloutError, perturbation_label
from fasvla.libero.env import SUITE_MAX_STEPS
from fasvla.libero.perturbations import Perturbation

DEFAULT_STATE_DIMS = [0, 1, 2]  # the end-effector position
FEEDBACK_CHOICES = ["model default", "anticipatory", "synchronous", "open_loop"]


class ReplayApp:
    def __init__(self, catalog: RolloutCatalog, runner=None):
        self.catalog, self.runner = catalog, runner

    # -- choosing a rollout ------------------------------------------------------------------------------------

    def choose_source(self, source: str):
        """-> overview text, success figure, success table, suite choices."""
        rollouts = self._of_source(source)
        table = success_table(rollouts)
        suites = sorted({r.suite for r in rollouts})
        text = f"**{len(rollouts)} episode{'' if len(rollouts) == 1 else 's'}** in `{source}`" + _problems(self.catalog.problems.get(source, []))
        return text, success_figure(table), table, _choices(suites, suites[0] if suites else None)

    def choose_suite(self, source: str, suite: str):
        """-> task choices (task id, labelled with its instruction)."""
        tasks = sorted({(r.task_id, r.task) for r in self._of_source(source) if r.suite == suite})
        choices = [(f"{task_id}: {task}", task_id) for task_id, task in tasks]
        return _choices(choices, choices[0][1] if choices else None)

    def choose_task(self, source: str, suite: str, task_id: int):
        """-> episode choices (rollout ids, labelled with trial, feedback mode, perturbation, outcome)."""
        rollouts = [r for r in self._of_source(source) if (r.suite, r.task_id) == (suite, task_id)]
        choices = [(r.label, r.id) for r in sorted(rollouts, key=lambda r: (r.trial, r.id))]
        return _choices(choices, choices[0][1] if choices else None)

    def _of_source(self, source: str):
        if source not in self.catalog.sources:
            raise RolloutError(f"source must be one of {list(self.catalog.sources)}, got {source!r}")
        return [r for r in self.catalog.rollouts if r.source == source]

    # -- one episode -------------------------------------------------------------------------------------------

    def show_episode(self, rollout_id: str, state_dims: list[int]):
        """-> header, the two camera videos, step slider, state dimension choices, frames and figure at step 0,
        the rollouts it can be compared with."""
        episode = self.catalog.load(rollout_id)
        dims = _valid_dims(state_dims, episode)
        videos = [self.catalog.video(episode, camera) for camera in episode.cameras[:2]]
        slider = gr.Slider(minimum=0, maximum=max(episode.num_steps - 1, 0), value=0, step=1)
        names = gr.CheckboxGroup(choices=episode.state_names, value=[episode.state_names[i] for i in dims])
        comparable = [(r.label, r.id) for r in self.catalog.comparable(rollout_id)]
        return (_header(episode), *_pad(videos), slider, names, *self._frames(episode, 0),
                episode_figure(episode, dims, 0), _choices(comparable, comparable[0][1] if comparable else None))

    def show_step(self, rollout_id: str, state_dims: list[int], step: int):
        """-> the cameras' frames at `step` and the figure with its marker there."""
        episode = self.catalog.load(rollout_id)
        step = _valid_step(step, episode)
        return (*self._frames(episode, step), episode_figure(episode, _valid_dims(state_dims, episode), step))

    def _frames(self, episode: EpisodeData, step: int) -> list:
        return _pad([episode.frame(camera, step) for camera in episode.cameras[:2]])

    # -- two episodes ------------------------------------------------------------------------------------------

    def show_comparison(self, id_a: str, id_b: str, camera_index: int, state_dims: list[int]):
        """-> header, the chosen camera's video of A and of B, step slider, frames and figure at step 0."""
        a, b = self._pair(id_a, id_b)
        camera = _camera(a, camera_index)
        slider = gr.Slider(minimum=0, maximum=max(a.num_steps, b.num_steps) - 1, value=0, step=1)
        header = f"**A** {_summary(a)}\n\n**B** {_summary(b)}"
        return (header, self.catalog.video(a, camera), self.catalog.video(b, camera), slider,
                *_comparison_at(a, b, camera, state_dims, 0))

    def compare_step(self, id_a: str, id_b: str, camera_index: int, state_dims: list[int], step: int):
        """-> frames of A and B at `step` (each episode's last frame once it has ended) and the figure."""
        a, b = self._pair(id_a, id_b)
        return _comparison_at(a, b, _camera(a, camera_index), state_dims, _valid_step(step, a, b))

    def _pair(self, id_a: str, id_b: str) -> tuple[EpisodeData, EpisodeData]:
        if id_b not in {r.id for r in self.catalog.comparable(id_a)}:
            raise RolloutError(f"rollout {id_b!r} is not a rollout of the same task and init state as {id_a!r}")
        return self.catalog.load(id_a), self.catalog.load(id_b)

    # -- a new episode -----------------------------------------------------------------------------------------

    def run_live(self, suite: str, task_id: int, trial: int, feedback_mode: str, push_step: int, push_x: float,
                 push_y: float, push_z: float, action_noise: float, max_steps: int):
        """Yields (status, frame A, frame B, figure) as the episode runs; the last status names the recording,
        which joins the catalog."""
        if self.runner is None:
            raise RolloutError("live runs need LIBERO and a model: start the app with --model")
        from fasvla.libero.episode import EpisodeJob  # torch: imported by live runs only (a Space replays)

        if suite not in SUITE_MAX_STEPS:
            raise RolloutError(f"suite must be one of {list(SUITE_MAX_STEPS)}, got {suite!r}")
        perturbation = Perturbation(float(action_noise), 0, int(push_step) if push_step >= 0 else None,
                                    (float(push_x), float(push_y), float(push_z)), 2)
        mode = None if feedback_mode == "model default" else feedback_mode
        job = EpisodeJob(suite, int(task_id), int(trial))
        for progress in self.runner.run(job, mode, perturbation, int(max_steps) or None):
            status = f"step {progress.step}"
            if progress.result is not None:
                outcome = "success" if progress.result.success else "no success"
                status = f"{outcome} after {progress.step} steps; recorded in `{progress.recording}`"
                self.catalog = self.catalog.rescanned(str(self.runner.record_dir))  # the new recording joins it
            figure = episode_figure(progress.episode, DEFAULT_STATE_DIMS, progress.step - 1)
            yield (status, *_pad(progress.images[:2]), figure)


def build_blocks(app: ReplayApp) -> gr.Blocks:
    """The page: a source picker, then Overview, Episode, Compare and (with a model) Run tabs."""
    sources = list(app.catalog.sources)
    with gr.Blocks(title="FAS-VLA rollouts") as blocks:
        gr.Markdown("# FAS-VLA rollouts\nLIBERO episodes recorded by `eval_libero.py`: cameras, actions, observed "
                    "against predicted states, and the policy's latency, step by step.")
        unavailable = [p for s in app.catalog.requested if s not in app.catalog.sources for p in app.catalog.problems[s]]
        gr.Markdown(_problems(unavailable), visible=bool(unavailable))
        source = gr.Dropdown(sources, value=sources[0] if sources else None, label="rollout source")
        with gr.Tab("Overview"):
            overview = gr.Markdown()
            success_plot = gr.Plot(label="success per task")
            table = gr.Dataframe(label="success per task and suite", interactive=False)
        with gr.Tab("Episode"):
            with gr.Row():
                suite = gr.Dropdown(label="suite")
                task = gr.Dropdown(label="task")
                episode = gr.Dropdown(label="episode", scale=2)
            header = gr.Markdown()
            with gr.Row():
                videos = [gr.Video(label=f"camera {i + 1}", autoplay=False, height=300) for i in range(2)]
            step = gr.Slider(0, 1, value=0, step=1, label="policy step")
            with gr.Row():
                frames = [gr.Image(label=f"camera {i + 1} at the step", height=256) for i in range(2)]
            dims = gr.CheckboxGroup(label="state dimensions", type="index")
            plot = gr.Plot(label="episode")
        with gr.Tab("Compare"):
            with gr.Row():
                other = gr.Dropdown(label="compare the episode with (same task and init state)", scale=3)
                camera = gr.Radio(["camera 1", "camera 2"], value="camera 1", type="index", label="camera")
            compare_header = gr.Markdown()
            with gr.Row():
                compare_videos = [gr.Video(label=f"{tag}", autoplay=False, height=300) for tag in "AB"]
            compare_step = gr.Slider(0, 1, value=0, step=1, label="policy step")
            with gr.Row():
                compare_frames = [gr.Image(label=f"{tag} at the step", height=256) for tag in "AB"]
            compare_plot = gr.Plot(label="A against B")
        if app.runner is not None:
            _run_tab(app)

        on = functools.partial(_event, app)
        on(source.change, "choose_source", [source], [overview, success_plot, table, suite])
        blocks.load(_shown_errors(app.choose_source), [source], [overview, success_plot, table, suite])
        on(suite.change, "choose_suite", [source, suite], [task])
        on(task.change, "choose_task", [source, suite, task], [episode])
        on(episode.change, "show_episode", [episode, dims], [header, *videos, step, dims, *frames, plot, other])
        for trigger in (step.change, dims.input):
            on(trigger, "show_step", [episode, dims, step], [*frames, plot])
        pair = [episode, other, camera, dims]
        for trigger in (other.change, camera.change):
            on(trigger, "show_comparison", pair, [compare_header, *compare_videos, compare_step, *compare_frames,
                                                 compare_plot])
        on(compare_step.change, "compare_step", [*pair, compare_step], [*compare_frames, compare_plot])
    return blocks


def _run_tab(app: ReplayApp) -> None:
    with gr.Tab("Run"):
        gr.Markdown(f"Run one new episode with `{app.runner.model_name}`; it is recorded under "
                    f"`{app.runner.record_dir}` like the evaluation records its episodes.")
        with gr.Row():
            suite = gr.Dropdown(list(SUITE_MAX_STEPS), value="libero_object", label="suite")
            task_id = gr.Number(0, precision=0, minimum=0, maximum=9, label="task id")
            trial = gr.Number(0, precision=0, minimum=0, label="trial (init state)")
            mode = gr.Dropdown(FEEDBACK_CHOICES, value="model default", label="feedback mode")
        with gr.Row():
            push_step = gr.Number(-1, precision=0, label="push at step (-1: no push)")
            push = [gr.Number(0.0, label=f"push force {axis} (N)") for axis in "xyz"]
            noise = gr.Number(0.0, minimum=0, label="action noise (std)")
            max_steps = gr.Number(0, precision=0, minimum=0, label="step cap (0: the suite's limit)")
        start = gr.Button("Run an episode", variant="primary")
        status = gr.Markdown()
        with gr.Row():
            frames = [gr.Image(label=f"camera {i + 1}", height=256) for i in range(2)]
        plot = gr.Plot(label="live")
        start.click(_shown_errors(app.run_live), [suite, task_id, trial, mode, push_step, *push, noise, max_steps],
                    [status, *frames, plot], api_name="run_live")


def _event(app: ReplayApp, trigger, name: str, inputs: list, outputs: list) -> None:
    trigger(_shown_errors(getattr(app, name)), inputs, outputs, api_name=name, trigger_mode="always_last")


def _shown_errors(callback):
    """Errors of the user's choice (a missing or malformed rollout, a bad id or value) become a message in the page
    instead of a stack trace."""
    if inspect.isgeneratorfunction(callback):
        @functools.wraps(callback)
        def streamed(*args):
            try:
                yield from callback(*args)
            except ValueError as error:  # RolloutError included
                raise gr.Error(str(error), print_exception=False) from error
        return streamed

    @functools.wraps(callback)
    def shown(*args):
        try:
            return callback(*args)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
    return shown


def _problems(problems: list[str]) -> str:
    return "".join(["\n\n**Could not be read:**\n"] + [f"\n- {p}" for p in problems]) if problems else ""


def _choices(choices: list, value):
    return gr.Dropdown(choices=choices, value=value)


def _pad(items: list, size: int = 2) -> list:
    return list(items) + [None] * (size - len(items))


def _valid_dims(state_dims, episode: EpisodeData) -> list[int]:
    dims = [int(i) for i in state_dims or [] if 0 <= int(i) < len(episode.state_names)]
    return dims or [i for i in DEFAULT_STATE_DIMS if i < len(episode.state_names)]


def _valid_step(step, *episodes: EpisodeData) -> int:
    last = max(e.num_steps for e in episodes) - 1
    if step is None or not 0 <= int(step) <= last:
        raise RolloutError(f"step must be in [0, {last}], got {step!r}")
    return int(step)


def _comparison_at(a: EpisodeData, b: EpisodeData, camera: str, state_dims, step: int) -> tuple:
    frames = [e.frame(camera, min(step, e.num_steps - 1)) for e in (a, b)]
    return (*frames, comparison_figure(a, b, _valid_dims(state_dims, a), step))


def _camera(episode: EpisodeData, index: int) -> str:
    if not 0 <= int(index) < len(episode.cameras):
        raise RolloutError(f"camera index must be in [0, {len(episode.cameras)}), got {index!r}")
    return episode.cameras[int(index)]


def _summary(episode: EpisodeData) -> str:
    r = episode.rollout
    outcome = {True: "success", False: "failure", None: "no outcome recorded"}[r.success]
    latency = np.nanmedian(episode.latency_ms) if np.isfinite(episode.latency_ms).any() else float("nan")
    return (f"{r.suite} task {r.task_id} · trial {r.trial} (init state {r.init_state_id}) · {r.feedback_mode} · "
            f"{perturbation_label(r.perturbation)} · {outcome} in {episode.num_steps} steps · median policy latency {latency:.1f} ms · "
            f"model `{r.model}`")


def _header(episode: EpisodeData) -> str:
    frames = "" if episode.has_every_frame else (
        f"\n\nRecorded without full-rate video: the cameras show the {int(episode.observed.sum())} frames the policy "
        "looked at, each held until the next (`eval_libero.py --max_episodes_rendered`).")
    return f"### {episode.rollout.task}\n{_summary(episode)}{frames}"
