"""The records a world is made of: objects, events, videos and captions (what world.json stores)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ObjectSpec:
    """One foreground object. x, y: initial centre as fractions of width / height; size is
    'small' | 'large' | 'varying' (the object grows or shrinks, so no caption states a size)."""

    shape: str
    color: str
    size: str
    role: str  # 'actor' (does an event) or 'distractor' (static, never the subject of an event)
    x: float
    y: float
    angle: float
    rgb: tuple[int, int, int]
    #: frames [first, last) the object is on screen; None = the whole clip. Long videos use it
    #: so that only the actors of nearby events are in view (a frame stays uncluttered), and the
    #: benchmark knob ``actor_visibility="own_event"`` so that each actor of a two-actor clip is
    #: on screen only around its own event. world.json records it as the object's ``visible``.
    visible: tuple[int, int] | None = None


@dataclass
class EventSpec:
    """One event: object ``actor`` (index into the video's objects) does ``motion`` during
    frames [start_frame, end_frame)."""

    actor: int
    motion: str
    start_frame: int
    end_frame: int
    direction: int = 1  # rotation sense (+1 / -1)
    phase: int = 0  # blink phase in frames


@dataclass
class VideoSpec:
    video_id: str
    index: int
    split: str  # 'train' | 'val' | 'test'
    background: str
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    bg_angle: float  # stripes / gradient direction, radians
    bg_period: float  # texture period in pixels
    bg_phase: tuple[float, float]
    objects: list[ObjectSpec]
    events: list[EventSpec]
    near_duplicate_of: str | None = None
    captions: list["Caption"] = field(default_factory=list)
    eval_sen_id: int | None = None
    #: a long video's own length and rate (None: the world's ``frames`` / ``fps``); when set,
    #: world.json also records every event's and object's time span in seconds.
    frames: int | None = None
    fps: int | None = None

    def record(self) -> dict:
        """JSON description of the video (world.json ``videos`` entry)."""
        return {
            "video_id": self.video_id,
            "split": self.split,
            "background": self.background,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "role": o.role,
                    "x": round(o.x, 4),
                    "y": round(o.y, 4),
                    "rgb": list(o.rgb),
                    **({} if o.visible is None else {"visible": list(o.visible)}),
                }
                for o in self.objects
            ],
            "events": [
                {"actor": e.actor, "motion": e.motion, "start_frame": e.start_frame, "end_frame": e.end_frame}
                for e in self.events
            ],
            "near_duplicate_of": self.near_duplicate_of,
            "sen_ids": [c.sen_id for c in self.captions],
            "eval_sen_id": self.eval_sen_id,
            **(self._timeline() if self.frames is not None else {}),
        }

    def _timeline(self) -> dict:
        """Long videos: length, and each event's / object's span in seconds (end exclusive)."""
        fps = float(self.fps)
        return {
            "frames": self.frames, "fps": self.fps, "duration": round(self.frames / fps, 3),
            "event_times": [[round(e.start_frame / fps, 3), round(e.end_frame / fps, 3)] for e in self.events],
            "visible_times": [None if o.visible is None else [round(o.visible[0] / fps, 3), round(o.visible[1] / fps, 3)]
                              for o in self.objects],
        }


@dataclass
class Caption:
    """A caption and what it means. ``semantics``:
    {"events": [{"shape", "color", "size", "motion"}...] (in temporal order, None = not said),
     "same_actor": bool, "background": str | None, "mentions": [{"shape", "color", "size"}...]}.
    motion may be exact (MOTIONS) or generic ('move' = any translation, 'resize' = grow/shrink)."""

    text: str
    kind: str  # 'full' | 'partial' | 'short'
    semantics: dict
    sen_id: int = -1
    matches: list[str] = field(default_factory=list)
    #: a moment query of a long video: {"event": k, "start": s, "end": e, "moments": {video_id:
    #: [[start, end], ...]}} (seconds; every matching event of every matching video)
    moment: dict | None = None
