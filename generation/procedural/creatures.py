"""Articulated figures (Labeled PSB vocabulary): Human (foot, hand, head, lowerarm,
lowerleg, torso, upperarm, upperleg) on a posable skeleton.

The skeleton is a tree of joints (pelvis → spine → neck → head; shoulders → elbows →
wrists; hips → knees → ankles). Each instance draws body proportions and a pose (standing,
walking, arms out or raised, sitting, kneeling) as joint angles; limbs are frustums between
joints, with a ball at each joint in the distal part so that bent limbs stay closed.
Frame: +y up, facing +z, feet on y = 0 when standing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.records import Mesh
from generation.procedural.primitives import (
    MeshBuilder,
    box_mesh,
    ellipsoid_mesh,
    frame_of,
    placed,
    rot_matrix,
    segment_mesh,
)

POSES = ("stand", "walk", "arms_out", "arms_up", "sit", "kneel", "wave")


def _limb_dir(flex: float, abduct: float, down: bool = True) -> np.ndarray:
    """A unit direction from a hanging (−y) or raised (+y) rest: ``flex`` degrees forward
    (towards +z) about x, then ``abduct`` degrees sideways (towards +x) about z."""
    d = np.array([0.0, -1.0 if down else 1.0, 0.0])
    return rot_matrix("z", abduct) @ (rot_matrix("x", -flex if down else flex) @ d)


def build_human(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    foot, hand, head, lowerarm, lowerleg, torso, upperarm, upperleg = range(8)
    b = MeshBuilder()
    s = rng.uniform(0.85, 1.15)  # overall size
    thigh, shin = s * rng.uniform(0.42, 0.5), s * rng.uniform(0.4, 0.48)
    upper, fore = s * rng.uniform(0.28, 0.34), s * rng.uniform(0.24, 0.3)
    spine = s * rng.uniform(0.5, 0.62)
    shoulder_w, hip_w = s * rng.uniform(0.17, 0.24), s * rng.uniform(0.08, 0.12)
    girth = rng.uniform(0.8, 1.3)  # slim to stocky
    r_limb = 0.055 * s * girth
    pose = str(rng.choice(POSES))
    j = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731 - a jitter draw, read inline
    # Joint angles (degrees): per side (left = −x, right = +x) hip flex / abduct, knee bend,
    # shoulder flex / abduct, elbow bend.
    hip_f, hip_a, knee, sh_f, sh_a, elbow = ([0.0, 0.0] for _ in range(6))
    for k, sx in enumerate((-1.0, 1.0)):
        hip_f[k], hip_a[k], knee[k] = j(-5, 10), sx * j(0, 10), j(0, 15)
        sh_f[k], sh_a[k], elbow[k] = j(-10, 20), sx * j(5, 20), j(0, 30)
        if pose == "walk":
            swing = j(15, 35) * (1 if k == 0 else -1)
            hip_f[k], knee[k], sh_f[k], elbow[k] = swing, j(5, 40), -swing, j(10, 40)
        elif pose == "arms_out":
            sh_a[k], sh_f[k] = sx * j(70, 100), j(-10, 30)
        elif pose == "arms_up":
            sh_a[k], sh_f[k] = sx * j(140, 175), j(-10, 20)
        elif pose == "sit":
            hip_f[k], knee[k], sh_f[k], elbow[k] = j(70, 100), j(70, 100), j(0, 40), j(20, 80)
        elif pose == "kneel":
            hip_f[k], knee[k] = (j(0, 20), j(80, 110)) if k == 0 else (j(70, 100), j(70, 100))
        elif pose == "wave" and k == 1:
            sh_a[k], elbow[k] = sx * j(80, 110), j(60, 110)
    pelvis = np.array([0.0, thigh + shin + 0.06 * s, 0.0])
    lean = rot_matrix("x", j(-8, 20) if pose != "sit" else j(0, 15))  # torso leans forward
    up = lean @ np.array([0.0, 1.0, 0.0])
    neck = pelvis + up * spine
    # Torso: a tapered, flattened body from the pelvis to the neck, plus the hips' block.
    chest_r, waist_r = shoulder_w * rng.uniform(0.85, 1.05), hip_w * rng.uniform(1.4, 1.9)
    tv, tf = segment_mesh(pelvis, neck, waist_r * girth, chest_r * girth, 16)
    depth = rng.uniform(0.55, 0.75)  # chest depth / width
    tv = (tv - pelvis) @ np.diag([1.0, 1.0, depth]) + pelvis
    b.add((tv, tf), torso)
    b.add(
        placed(ellipsoid_mesh(waist_r * girth * 1.1, 0.08 * s, waist_r * girth * depth * 1.1), lean, at=tuple(pelvis)),
        torso,
    )
    b.add(segment_mesh(neck - up * 0.02, neck + up * 0.07 * s, r_limb * 0.9, r_limb * 0.8), torso)
    hr = s * rng.uniform(0.09, 0.12)
    b.add(placed(ellipsoid_mesh(hr * 0.85, hr * 1.1, hr), lean, at=tuple(neck + up * (0.07 * s + hr))), head)
    tilt = rot_matrix("x", 0.0)
    for k, sx in enumerate((-1.0, 1.0)):
        # Legs.
        hip = pelvis + lean @ np.array([sx * hip_w, -0.03 * s, 0.0])
        d_thigh = _limb_dir(hip_f[k], hip_a[k])
        knee_p = hip + d_thigh * thigh
        d_shin = rot_matrix("z", hip_a[k]) @ rot_matrix("x", -(hip_f[k] - knee[k])) @ np.array([0.0, -1.0, 0.0])
        ankle = knee_p + d_shin * shin
        b.add(segment_mesh(hip, knee_p, r_limb * 1.5, r_limb * 1.15), upperleg)
        b.add(placed(ellipsoid_mesh(r_limb * 1.15, r_limb * 1.15, r_limb * 1.15, 6, 12), at=tuple(knee_p)), lowerleg)
        b.add(segment_mesh(knee_p, ankle, r_limb * 1.1, r_limb * 0.75), lowerleg)
        fl = s * rng.uniform(0.2, 0.26)
        fv, ff = placed(box_mesh((r_limb * 1.6, r_limb * 1.2, fl)), at=(0.0, -r_limb * 0.4, fl * 0.35))
        b.add(((fv @ (rot_matrix("z", hip_a[k]) @ rot_matrix("x", -(hip_f[k] - knee[k]) * 0.3)).T) + ankle, ff), foot)
        # Arms.
        shoulder = neck + lean @ np.array([sx * shoulder_w, -0.04 * s, 0.0])
        d_upper = _limb_dir(sh_f[k], sh_a[k])
        elbow_p = shoulder + d_upper * upper
        bend = frame_of(d_upper) @ rot_matrix("x", elbow[k]) @ np.array([0.0, 1.0, 0.0])  # forward bend
        wrist = elbow_p + bend * fore
        b.add(placed(ellipsoid_mesh(r_limb, r_limb, r_limb, 6, 12), at=tuple(shoulder)), upperarm)
        b.add(segment_mesh(shoulder, elbow_p, r_limb, r_limb * 0.85), upperarm)
        b.add(placed(ellipsoid_mesh(r_limb * 0.85, r_limb * 0.85, r_limb * 0.85, 6, 12), at=tuple(elbow_p)), lowerarm)
        b.add(segment_mesh(elbow_p, wrist, r_limb * 0.85, r_limb * 0.6), lowerarm)
        hl = s * rng.uniform(0.08, 0.11)
        hv, hf = placed(ellipsoid_mesh(r_limb * 0.9, hl, r_limb * 0.45, 6, 12), at=(0.0, hl * 0.9, 0.0))
        b.add((hv @ (frame_of(bend) @ tilt).T + wrist, hf), hand)
    params = {"pose": pose, "size": s, "girth": girth, "thigh": thigh, "upper_arm": upper, "spine": spine}
    return b.mesh(), params
