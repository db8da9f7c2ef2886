"""Camera images rendered on demand: the physics steps without cameras, an observation's images are rendered only
when someone reads them (DESIGN.md section 10).

Rendering two cameras costs 10-15 times a LIBERO physics step on this CPU, and a chunk or streaming policy looks at
images only when it starts a chunk. Rendering later than the step is not as simple as calling the renderer later:
robosuite samples every observable (states included) at one substep of a control step, one before its end, and the
simulation has moved on by the time `env.step` returns. An observable of our own therefore copies the whole MuJoCo
data (derived quantities, contacts and solver warm start included; about 1 MB and 0.07 ms) at the instant every
other observable samples. Rendering a frame swaps that copy into the simulation, renders through robosuite's own
camera path, and copies the live data back bit for bit: the pixels equal those of a camera observable, and the
physics never knows (tests/test_libero_frames.py checks both).

The protocol's hard reset rebuilds the MuJoCo model, and robosuite then builds a new rendering context for it,
uploading every mesh and texture again (1.1 s of a 2.1 s reset on this CPU), and new camera observables, each of
which renders a test frame (0.3 s). The model's assets do not change between resets (only where bodies are placed),
so the context is kept and handed to the new simulation, and the disabled camera observables are not rebuilt: a
reset takes 0.75 s, with the same pixels (tests/test_libero_frames.py renders moved fixtures both ways). robosuite
never makes its GL context current before rendering, and freeing a context deletes GL objects by name in whichever
context is current: rendering makes its own current first, and closing an environment frees its context with that
context current.
"""

import time
from collections import OrderedDict

import mujoco
import numpy as np

SNAPSHOT_OBSERVABLE = "fasvla_render_snapshot"


class CameraFrames:
    """The simulator's data at the last `keep` observations (None: every one since the model was built), so that
    their cameras can be rendered later.

    Frames are numbered in the order robosuite samples them; `latest` is the newest. A hard reset rebuilds the
    MuJoCo model: the frames of the old model are dropped (reading one raises) and the copies are reallocated.
    `renders` and `render_s` count the frames rendered and the seconds it took (profiling).
    """

    def __init__(self, env, cameras: list[str], resolution: int, keep: int | None = 2):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be None or >= 1, got {keep!r}")
        self.env, self.cameras, self.resolution, self.keep = env, list(cameras), resolution, keep
        self.latest, self.renders, self.render_s = -1, 0, 0.0
        self._held: OrderedDict[int, mujoco.MjData] = OrderedDict()  # frame -> copy of the data
        self._spare: list[mujoco.MjData] = []  # copies of dropped frames, reused
        self._model = None
        self._install()
        _keep_render_context(env)

    def _install(self) -> None:
        """Camera observables off, the snapshot observable on, sampled at the same rate as every other observable."""
        from robosuite.utils.observables import Observable, sensor

        @sensor(modality="fasvla")
        def snapshot(obs_cache):
            self._snapshot()
            return self.latest

        for camera in self.cameras:
            self.env.modify_observable(f"{camera}_image", "enabled", False)
        # nor build them again at every hard reset (each new camera observable renders a test frame: 0.3 s a reset)
        self.env.use_camera_obs = False
        self.env.add_observable(Observable(SNAPSHOT_OBSERVABLE, snapshot, sampling_rate=self.env.control_freq))

    def _snapshot(self) -> None:
        sim = self.env.sim
        model = sim.model._model
        if model is not self._model:  # a hard reset built a new model: the old copies do not fit it
            self._model, self._held, self._spare = model, OrderedDict(), []
            self._scratch = mujoco.MjData(model)
        if self.keep is not None and len(self._held) == self.keep:
            self._spare.append(self._held.popitem(last=False)[1])
        copy = self._spare.pop() if self._spare else mujoco.MjData(model)
        mujoco.mj_copyData(copy, model, sim.data._data)
        self.latest += 1
        self._held[self.latest] = copy

    def render(self, frame: int) -> list[np.ndarray]:
        """Every camera's image at `frame`, (S, S, 3) uint8, as robosuite's camera observables return them."""
        if frame not in self._held:
            held = f"frames {min(self._held)}..{max(self._held)}" if self._held else "no frame (reset or closed since)"
            raise RuntimeError(f"frame {frame} is no longer held (the simulator holds {held}): read an observation's "
                               "images before the simulator moves on")
        from robosuite.macros import IMAGE_CONVENTION
        from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

        started = time.perf_counter()
        sim = self.env.sim
        model, live = sim.model._model, sim.data._data
        flip = IMAGE_CONVENTION_MAPPING[IMAGE_CONVENTION]
        # another environment's context may be current (or freed meanwhile): robosuite renders into whichever is
        sim._render_context_offscreen.gl_ctx.make_current()
        mujoco.mj_copyData(self._scratch, model, live)
        mujoco.mj_copyData(live, model, self._held[frame])
        try:
            return [sim.render(camera_name=camera, width=self.resolution, height=self.resolution)[::flip]
                    for camera in self.cameras]
        finally:
            mujoco.mj_copyData(live, model, self._scratch)
            self.renders += 1
            self.render_s += time.perf_counter() - started

    def close(self) -> None:
        """Release what rendering holds (the environment is closing)."""
        self.drop()
        release_render_context(self.env)

    def drop(self) -> None:
        """Forget every held frame (memory for `keep=None`, e.g. after an episode)."""
        self._spare += list(self._held.values())
        self._held.clear()


def _keep_render_context(env) -> None:
    """Across hard resets, keep the rendering context (the assets uploaded once) and give it to each new simulation
    before robosuite would build another. The new model gets a scene of its own.

    The old simulation is dropped rather than freed by robosuite's `MjSim.free`, whose full garbage collection costs
    0.2-0.4 s a reset in a process holding a model: nothing refers to the old simulation once the context is handed
    on and the robots are reset onto the new one, so reference counting frees it (tests/test_libero_frames.py)."""
    initialize = env._initialize_sim
    kept = {}

    def destroy_keeping_context():
        if env.sim is not None:
            kept["context"] = env.sim._render_context_offscreen
            env.sim._render_context_offscreen = None
            env.sim = None

    def initialize_with_kept_context(*args, **kwargs):
        initialize(*args, **kwargs)
        context = kept.pop("context", None)
        if context is not None:
            context.gl_ctx.make_current()
            context.sim, context.model, context.data = env.sim, env.sim.model, env.sim.data
            context.scn = mujoco.MjvScene(env.sim.model._model, maxgeom=context.scn.maxgeom)
            env.sim.add_render_context(context)

    env._destroy_sim, env._initialize_sim = destroy_keeping_context, initialize_with_kept_context


def release_render_context(env) -> None:
    """Before the environment closes: robosuite's own teardown again, with this environment's context current.
    Freeing a MuJoCo rendering context deletes its GL objects by name in whichever context is current, which must
    be its own, not another environment's."""
    for name in ("_destroy_sim", "_initialize_sim"):  # the class's methods again
        env.__dict__.pop(name, None)
    if env.sim is not None and env.sim._render_context_offscreen is not None:
        env.sim._render_context_offscreen.gl_ctx.make_current()
