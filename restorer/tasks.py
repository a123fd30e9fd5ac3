"""What restorer can do, by name: the one list the catalog, the planner, the CLI and the app share."""

TASKS = (
    "denoise", "deblur", "derain", "dehaze", "lowlight", "enhance",
    "superres", "jpeg", "old-photo", "remove-text",
)

# Tasks that change only the pixels of a mask and keep every other pixel bit-identical.
MASK_LOCAL_TASKS = frozenset({"remove-text"})
