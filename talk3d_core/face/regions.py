"""The region labels of the mask images (stage masks) and the groups of them the losses use."""

#: Label values of the mask images.
LABELS: dict[str, int] = {
    "background": 0,
    "skin": 1,  # face incl. brows, nose, ears
    "lips": 2,
    "mouth_interior": 3,  # teeth, tongue, dark gap
    "eyes": 4,
    "hair": 5,
    "neck_torso": 6,  # neck, shoulders, clothes
}

#: Labels that make up the face for the face-region metrics and losses: skin, lips, mouth, eyes.
FACE_LABELS = tuple(LABELS[k] for k in ("skin", "lips", "mouth_interior", "eyes"))
#: Lips and the mouth's inside: the deltaplane stage's mouth loss.
MOUTH_LABELS = tuple(LABELS[k] for k in ("lips", "mouth_interior"))
BACKGROUND_LABEL = LABELS["background"]
