"""Captions generated from a face's own human annotations, for the contrastive branch of pre-training.

No human-written captions exist for the shared faces. As MM-CelebA-HQ generated its captions from
attributes, these are generated from what the annotations show:

- a CelebAMask-HQ parsing mask (index PNG, ``PALETTE`` order): eyeglasses, hat, earrings, necklace,
  open mouth (inner-mouth pixels), visible ears, hair length (hair below the chin) or no hair;
- 68 iBUG landmarks: head yaw (nose tip against the face contour), roll (eye line angle), mouth
  opening (inner-lip gap against mouth width).

Every phrase is a pure function of the annotation, so the same face always gets the same caption.
Thresholds are fractions of the face, not of the image, so they hold at any resolution.
"""
from __future__ import annotations

import math

import numpy as np

# CelebAMask-HQ index-PNG order (../shared/data/celebamask-hq, common tooling order).
SKIN, NOSE, EYEGLASSES, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR = 1, 2, 3, 4, 5, 6, 7, 8, 9
INNER_MOUTH, U_LIP, L_LIP, HAIR, HAT, EARRING, NECKLACE, NECK, CLOTH = 10, 11, 12, 13, 14, 15, 16, 17, 18

# Minimum share of the face area (skin pixels) for a part to count as present.
MIN_SHARE = {EYEGLASSES: 0.01, HAT: 0.02, EARRING: 0.0008, NECKLACE: 0.002, INNER_MOUTH: 0.004,
             L_EAR: 0.004, R_EAR: 0.004}
LONG_HAIR_BELOW_CHIN = 0.0    # lowest hair row below the chin (share of face height); crops end near the shoulders
NO_HAIR_SHARE = 0.02          # hair area under this share of the face area: "no visible hair"

YAW_TURNED = 0.18             # |nose offset| / half face width
ROLL_TILTED_DEG = 10.0
MOUTH_OPEN_RATIO = 0.12       # inner-lip gap / mouth width


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _sentence(phrases: list[str]) -> str:
    if not phrases:
        return "a photo of a face."
    return f"a photo of a face with {_join(phrases)}."


def mask_phrases(mask: np.ndarray) -> list[str]:
    """Phrases for one CelebAMask-HQ index mask (H, W) of palette indices 0..18."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) index mask, got shape {mask.shape}")
    counts = np.bincount(mask.ravel(), minlength=19)
    face_area = max(int(counts[SKIN]), 1)

    def present(label: int) -> bool:
        return counts[label] >= MIN_SHARE[label] * face_area

    phrases = []
    if present(EYEGLASSES):
        phrases.append("eyeglasses")
    if present(HAT):
        phrases.append("a hat")
    if present(EARRING):
        phrases.append("earrings")
    if present(NECKLACE):
        phrases.append("a necklace")
    if present(INNER_MOUTH):
        phrases.append("an open mouth")
    ears = int(present(L_EAR)) + int(present(R_EAR))
    if ears == 2:
        phrases.append("both ears visible")
    elif ears == 1:
        phrases.append("one ear visible")
    phrases.extend(_hair_phrases(mask, counts, face_area))
    return phrases


def _hair_phrases(mask: np.ndarray, counts: np.ndarray, face_area: int) -> list[str]:
    if counts[HAIR] < NO_HAIR_SHARE * face_area:
        return [] if counts[HAT] else ["no visible hair"]
    skin_rows = np.flatnonzero((mask == SKIN).any(axis=1))
    hair_rows = np.flatnonzero((mask == HAIR).any(axis=1))
    if len(skin_rows) == 0:
        return ["hair"]
    top, chin = int(skin_rows[0]), int(skin_rows[-1])
    below = int(hair_rows[-1]) - chin
    if below > LONG_HAIR_BELOW_CHIN * max(chin - top, 1):
        return ["long hair"]
    return ["short hair"]


def caption_from_mask(mask: np.ndarray) -> str:
    return _sentence(mask_phrases(mask))


def landmark_phrases(points: np.ndarray) -> list[str]:
    """Phrases for 68 iBUG landmarks (68, 2), image coordinates (x right, y down)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (68, 2) or not np.isfinite(p).all():
        raise ValueError(f"expected 68 finite (x, y) landmarks, got shape {p.shape}")
    phrases = []
    # Yaw: nose tip (30) between the jaw ends (0, 16). In the image, a nose nearer the jaw end on
    # the image's left means the person turned towards the image's left, i.e. their right.
    left, right, nose = p[0], p[16], p[30]
    half = max(np.linalg.norm(right - left) / 2, 1e-6)
    centre = (left + right) / 2
    axis = (right - left) / (2 * half)
    offset = float(np.dot(nose - centre, axis)) / half
    if offset < -YAW_TURNED:
        phrases.append("the head turned to its right")
    elif offset > YAW_TURNED:
        phrases.append("the head turned to its left")
    else:
        phrases.append("a frontal pose")
    # Roll: angle of the line between the eye centres.
    eye_l, eye_r = p[36:42].mean(0), p[42:48].mean(0)
    roll = math.degrees(math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))
    if abs(roll) > ROLL_TILTED_DEG:
        phrases.append("a tilted head")
    # Mouth: gap between inner lips (62 top, 66 bottom) against mouth width (48, 54).
    width = max(np.linalg.norm(p[54] - p[48]), 1e-6)
    gap = float(np.linalg.norm(p[66] - p[62])) / width
    phrases.append("an open mouth" if gap > MOUTH_OPEN_RATIO else "a closed mouth")
    return phrases


def caption_from_landmarks(points: np.ndarray) -> str:
    return _sentence(landmark_phrases(points))
