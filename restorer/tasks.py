"""What restorer can do, by name: the one list the catalog, the planner, the CLI and the app share."""

TASKS = (
    "denoise", "deblur", "derain", "dehaze", "lowlight", "enhance",
    "superres", "jpeg", "old-photo", "remove-text", "faces",
)

# Each task in the user's words: the plan lines of the app, progress in the app and the CLI.
TASK_WORDS = {
    "denoise": "Reduce noise",
    "deblur": "Remove blur",
    "derain": "Remove rain",
    "dehaze": "Remove haze",
    "lowlight": "Brighten",
    "enhance": "Enhance colour and tone",
    "superres": "Upscale",
    "jpeg": "Remove JPEG artefacts",
    "old-photo": "Repair old photo",
    "remove-text": "Remove text",
    "faces": "Restore faces",
}

# Tasks that change only the pixels of a mask and keep every other pixel bit-identical
# (faces: only inside each restored face's feathered mask).
MASK_LOCAL_TASKS = frozenset({"remove-text", "faces"})
