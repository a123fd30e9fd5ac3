"""Natural-language instruction -> a plan of restoration steps.

    plan("it's too dark and grainy, then upscale 2x")
    -> ParsedInstruction(steps=[Intent("lowlight", {}, "it's too dark"), Intent("denoise", {}, "grainy"),
                   Intent("superres", {"scale": 2}, "upscale 2x")], ...)

No model: a lexicon of how people describe each degradation (problems such as "grainy",
actions such as "sharpen", wanted qualities such as "brighter"), a light stemmer, a
typo-tolerant matcher (restricted edit distance) and a small grammar for order, scale,
strength and negation. Standard library only, microseconds per sentence.

How a sentence is read
- Words are stemmed ("blurrier" -> "blur"), typos are matched to the lexicon when the word is
  not a common English word ("remvoe the rian" -> rain), then multi-word phrases are matched
  longest first ("out of focus", "washed out", "salt and pepper").
- Clauses are split at punctuation and at "and", "but", "also", "plus", "while". Strength
  words and negations act inside their clause.
- Every task named by a clear cue becomes a step. Weak cues ("improve", "quality", "clear",
  "restore") are only used when nothing clear was said, and then the best one wins. A plain
  "make it better" becomes `enhance`.
- Order: the user's order when they state one ("then", "after that", "first", "finally",
  "X before Y", "X after Y", "after X, Y"); tasks within one stage, or with no stated order,
  follow CANONICAL_ORDER.
- Negation: "don't upscale", "no sharpening", "without denoising", "keep the grain",
  "leave the text", "neither ... nor ..." remove a task (and say so in ParsedInstruction.notes), while a
  missing quality is a request: "it's not sharp" -> deblur, "no noise please" -> denoise.
- Scale (superres options): "4x", "x2", "2 times bigger", "double the size", "twice as big",
  "by 300%" -> {"scale": N}. Target resolutions depend on the image, so they are kept as
  targets: "to 4K" -> {"target_long_side": 3840} (8K 7680, 5K 5120, 2K 2048),
  "1080p" / "full HD" -> {"target_short_side": 1080}, "3000px" -> {"target_long_side": 3000}.
  `resolve_scale(options, width, height)` turns them into a model scale once the size is known.
- Strength: "slightly", "a little", "a touch", "gently" -> 0.3; "a bit", "somewhat",
  "moderately" -> 0.6; "a lot", "strongly", "heavily", "completely" -> 1.0. Only set when said.
- An instruction that only says what not to do ("don't upscale") raises InstructionError.
- Input that is not English ("enlève la pluie", Chinese, Cyrillic...) raises InstructionError
  saying that only English is understood; empty or incomprehensible input raises it with
  examples. Text that does not read as words at all (random characters, mostly symbols, over
  MAX_INSTRUCTION_CHARS) is refused rather than guessed at. Every message is one line.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from restorer.tasks import TASKS

# Pairs whose order was measured, not argued (bench/step_order.py, results in
# bench/step_order.md): both orders of the built-in operators on the paired samples, PSNR
# against the clean photo. (first, then) -> dB that order gained over the other.
# - lowlight then denoise: +1.06 dB on lol_778 (dark and noisy). Denoising first loses dark
#   detail: it even scores below brightening alone (19.20 vs 19.28 dB).
# - dehaze then denoise: +5.09 dB on the hazy SOTS photo with noise added (+2.8 dB without
#   noise): denoising raises the dark channel (0.43 -> 0.46 on sots_0002), so the dehazer
#   takes away more "haze" and darkens the photo.
# - dehaze then lowlight: +0.21 dB, on photos with one of the two (no sample has both).
# Superres first gained 0.2-0.3 dB but runs the other step on 4x the pixels: kept last.
MEASURED_ORDER = {("lowlight", "denoise"): 1.06, ("dehaze", "denoise"): 5.09, ("dehaze", "lowlight"): 0.21}

# Order used when the user states none; it agrees with every pair in MEASURED_ORDER, and the
# rest is reasoned. Restoration undoes the capture chain backwards: a photo is formed as
# scene -> weather (rain, haze) -> optics/motion blur -> sensor noise -> JPEG encoding, and
# (for prints) physical damage on top of all of it.
# - old-photo first: scratches, creases and fading are the outermost damage, and its own
#   pipeline includes global repair; other networks read scratches as structure.
# - remove-text next, on the original pixels: overlaid text is not part of the scene, and
#   every later step would otherwise "restore" the letters along with it.
# - jpeg first of the rest: compression blocks confuse every later network.
# - derain before dehaze: rain streaks are blur-like, so later steps turn them into hard
#   artefacts; haze is a smooth veil. Measured: dehaze, then lowlight, then denoise.
# - denoise before deblur (reasoned): a deblur net sharpens noise. This puts lowlight before
#   deblur too: deblurring works on the brightened, denoised signal.
# - enhance: the finishing touch of tone and colour.
# - superres last of the whole-photo steps: it multiplies the pixel count (the cost of every
#   later step) and would magnify any artefact left behind.
# - faces after everything: a face network restores an aligned crop of the finished photo
#   (as Real-ESRGAN's --face_enhance restores faces on the upscaled result), and only the
#   faces change.
CANONICAL_ORDER = ("old-photo", "remove-text", "jpeg", "derain", "dehaze", "lowlight", "denoise", "deblur",
                   "enhance", "superres", "faces")


class InstructionError(ValueError):
    """The instruction is empty, incomprehensible or not in English. The message says what
    restorer understands."""


@dataclass
class Intent:
    task: str
    options: dict = field(default_factory=dict)
    prompt: str = ""  # the user's words that asked for this step (InstructIR takes them)


@dataclass
class ParsedInstruction:
    steps: list[Intent]
    text: str
    notes: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return [s.task for s in self.steps]


# ------------------------------------------------------------------------------ lexicon
# Per task, entries separated by commas; an entry may be a phrase. Kinds:
#   problem  names the degradation ("noise", "blurry")    negated by "don't"/"keep"/"isn't"
#   action   asks for the operation ("denoise", "sharpen") negated by any negation
#   quality  what is wanted or missing ("sharp", "bright") "not sharp" is a request
# Forms are stemmed, so "blur" also covers blurry/blurred/blurriness/blurrier.
LEXICON: dict[str, dict[str, str]] = {
    "denoise": {
        "problem": "noise, grain, speckle, speck, dots, dotted, high iso, iso, static, mottled, "
                   "blotchy, splotchy, speckly, salt and pepper, sensor noise, color noise, colour noise, "
                   "chroma noise, luminance noise, gaussian noise, hot pixels",
        "action": "denoise, de noise, noise reduction, reduce noise, degrain, de grain",
        "quality": "noise free, noiseless, grain free",
    },
    "deblur": {
        "problem": "blur, fuzzy, out of focus, unfocused, defocused, defocus, misfocused, "
                   "motion, shake, shook, shaking, jitter, jittery, smear, smeared, smudge, "
                   "soft, ghosting, camera moved, hand moved, moving subject, unreadable, "
                   "illegible, hard to read",
        "action": "deblur, de blur, unblur, sharpen, refocus",
        "quality": "sharp, crisp, focus, in focus, focused, well defined, readable, legible",
    },
    "derain": {
        "problem": "rain, raindrop, rain drop, drizzle, downpour, drops, droplet, streak, "
                   "water drops, water droplets, water on the lens, wet lens, precipitation, "
                   "storm, stormy, shower of rain",
        "action": "derain, de rain",
        "quality": "",
    },
    "dehaze": {
        "problem": "haze, fog, mist, smog, smoke, murky, milky, pollution, polluted, "
                   "atmospheric, veil, airlight, sandstorm, sand storm, dust storm, dusty air",
        "action": "dehaze, de haze, defog, de fog, demist",
        "quality": "haze free, fog free",
    },
    "lowlight": {
        "problem": "dark, dim, underexposed, under exposed, low light, lowlight, night, "
                   "nighttime, gloom, poorly lit, badly lit, barely lit, poor lighting, "
                   "bad lighting, low lighting, dim lighting, weak lighting, not enough light, "
                   "too little light, exposure, pitch black, too black, lol",
        "action": "brighten, lighten, light up, illuminate, lift the shadows, exposure correction",
        "quality": "bright, brightness, more light, better lighting, illumination, well lit, "
                   "visible in the dark",
    },
    "enhance": {
        "problem": "dull, flat, washed out, bland, lifeless, boring, pale, desaturated, "
                   "too bright, overexposed, over exposed, faded colors, faded colours, "
                   "low contrast, muddy, drab, tint, tinted, color cast, colour cast, bluish, "
                   "greenish, reddish, yellowish, orange cast",
        # "generic": the verb "enhance" takes another task's object ("enhance the
        # resolution"): it only counts when its clause names no other task.
        "generic": "enhance, enhancement",
        "action": "retouch, tonemap, tone mapping, tone map, color grade, "
                   "colour grade, grade, grading, color correct, colour correct, "
                   "color correction, colour correction, white balance, beautify, polish, "
                   "edit like a pro, make it pop",
        "quality": "color, colour, colorful, colourful, vibrant, vibrance, vivid, saturation, "
                   "saturated, contrast, pop, punch, punchy, tone, hdr, dynamic range, dslr, "
                   "professional, pro, photographer, aesthetic, beautiful, stunning, gorgeous, "
                   "cinematic, magazine, studio quality, warmer, cooler, rich",
    },
    "superres": {
        "problem": "low resolution, low res, lowres, pixelated, pixelation, pixellated, pixely, "
                   "too small, thumbnail, upscaling artifacts",
        "action": "upscale, upscaling, upsample, upsampling, upsize, upres, up res, up scale, "
                   "enlarge, enlargement, magnify, zoom, zoom in, super resolution, superres, "
                   "super res, super resolve, increase resolution, increase the resolution, "
                   "increase size, increase the size, scale up, blow up",
        "quality": "resolution, high resolution, higher resolution, hi res, high res, hires, "
                   "higher res, bigger, larger, size, pixels, pixel, more pixels, "
                   "megapixel, megapixels, hd, uhd, high definition, full hd, fhd, qhd",
    },
    "jpeg": {
        "problem": "jpeg, jpg, compression, compressed, artifact, artefact, blocky, block, "
                   "blockiness, macroblock, ringing, mosquito noise, banding, compression noise, "
                   "jpeg noise",
        "action": "deblock, de block, dejpeg, decompress artifacts",
        "quality": "",
    },
    "old-photo": {
        "problem": "old, vintage, antique, scratch, crease, folded, fold, tear, torn, rip, "
                   "ripped, crack, cracked, damage, damaged, faded, fade, fading, sepia, "
                   "yellowed, yellowing, stain, stained, mold, mould, dust spots, dusty, "
                   "worn, aged, decades old, film scan, old print, family photo",
        "action": "restore old, photo restoration",
        "quality": "",
    },
    "faces": {
        # "face" is a quality: "the face isn't sharp" asks for it, "don't touch the faces"
        # and "keep the faces" leave them alone
        "problem": "",
        "action": "face restoration, restore the face, restore the faces, restore faces, face enhancement, "
                  "enhance the face, enhance the faces, enhance faces, fix the face, fix the faces, fix faces, "
                  "face fix, face retouch",
        "quality": "face, faces, facial, facial features, facial details",
    },
    "remove-text": {
        "problem": "text, watermark, caption, subtitle, logo, lettering, letters, writing, "
                   "written, words, word, timestamp, time stamp, date stamp, datestamp, stamp, "
                   "signature, label, overlay, title, credits, copyright, handwriting, "
                   "graffiti, typing, font, meme text, banner, sticker, tag",
        "action": "",
        "quality": "",
    },
}

# Weak cues: only used when the sentence names nothing clearer; the best total wins.
WEAK: dict[str, dict[str, float]] = {
    "enhance": {"improve": 1.0, "better": 1.0, "nicer": 1.0, "nice": 0.8, "edit": 1.0,
                "fix": 0.6, "good": 0.6, "great": 0.6, "pretty": 0.8, "look": 0.5,
                "awesome": 0.8, "amazing": 0.8, "perfect": 0.6, "style": 0.6, "filter": 0.8,
                "instagram": 1.0, "artistic": 0.8, "mood": 0.6, "touch up": 1.2,
                # plain complaints, and colour names (a colour cast)
                "ugly": 0.6, "bad": 0.5, "terrible": 0.5, "awful": 0.5, "horrible": 0.5,
                "poor": 0.5, "yellow": 0.6, "blue": 0.6, "green": 0.6, "red": 0.6,
                "orange": 0.6, "purple": 0.6, "magenta": 0.6, "cyan": 0.6},
    "superres": {"big": 1.5, "large": 1.5, "quality": 1.5, "detail": 1.5, "small": 1.5, "tiny": 1.2, "clarity": 0.8,
                 "definition": 1.2},
    "derain": {"wet": 1.0, "water": 0.8, "umbrella": 1.0},
    "dehaze": {"clear": 1.2, "clarity": 1.0, "visibility": 1.5, "visible": 1.2, "cloudy": 1.0,
               "grey": 0.8, "gray": 0.8},
    "lowlight": {"see": 1.0, "light": 1.0, "lit": 1.0, "evening": 1.0, "black": 0.8,
                 "shadow": 1.0},
    "denoise": {"clean": 1.0, "smooth": 1.0, "spots": 1.0, "dirty": 0.8},
    "deblur": {"moving": 1.0, "moved": 1.0, "details": 0.5, "steady": 1.0},
    "old-photo": {"restore": 1.2, "restoration": 1.2, "repair": 1.0, "scan": 1.0,
                  "scanned": 1.0, "grandma": 1.0, "grandpa": 1.0, "grandparents": 1.0,
                  "black and white": 1.0, "print": 0.8},
    "remove-text": {"sign": 0.5, "numbers": 0.8, "date": 1.0},
    "faces": {"portrait": 1.2, "selfie": 1.2, "headshot": 1.2},
}

STRENGTH_WORDS: dict[str, float] = {
    "slightly": 0.3, "slight": 0.3, "a little": 0.3, "a little bit": 0.3, "a touch": 0.3,
    "a tad": 0.3, "lightly": 0.3, "gently": 0.3, "gentle": 0.3, "subtly": 0.3, "subtle": 0.3,
    "mildly": 0.3, "mild": 0.3, "just a bit": 0.3, "a hint": 0.3,
    "a bit": 0.6, "somewhat": 0.6, "moderately": 0.6, "moderate": 0.6, "partially": 0.6,
    "partly": 0.6, "a fair bit": 0.6,
    "a lot": 1.0, "lots": 1.0, "strongly": 1.0, "strong": 1.0, "heavily": 1.0, "heavy": 1.0,
    "aggressively": 1.0, "aggressive": 1.0, "significantly": 1.0, "drastically": 1.0,
    "completely": 1.0, "totally": 1.0, "fully": 1.0, "entirely": 1.0, "as much as possible": 1.0,
    "maximum": 1.0, "max": 1.0, "extremely": 1.0, "af": 1.0, "much": 1.0, "hard": 1.0,
}

# Negations. imperative: "don't X" drops X. state: "isn't X" drops a problem or action but a
# missing quality is a request ("not sharp"). nominal: "no X"/"without X" drops an action, but
# a problem or a quality is a request ("no noise please", "it has no sharpness"). less: "less
# X"/"shouldn't be X" drops an action or a quality, a problem is a request ("less grainy").
# keep: "keep the grain" drops it.
NEGATIONS: dict[str, str] = {
    "don't": "imperative", "dont": "imperative", "do not": "imperative", "never": "imperative",
    "avoid": "imperative", "skip": "imperative", "neither": "imperative", "nor": "imperative",
    "no need to": "imperative", "stop": "imperative", "didn't": "imperative",
    "not": "state", "isn't": "state", "isnt": "state", "aren't": "state", "wasn't": "state",
    "doesn't": "state", "doesnt": "state", "can't": "state", "cant": "state", "cannot": "state",
    "can not": "state", "won't": "state", "couldn't": "state", "hardly": "state", "lacks": "state",
    "lacking": "state", "lack of": "state", "lack": "state",
    "no": "nominal", "without": "nominal", "free of": "nominal", "free from": "nominal",
    "shouldn't": "less", "should not": "less", "less": "less", "fewer": "less",
    "keep": "keep", "preserve": "keep", "retain": "keep", "maintain": "keep", "leave": "keep",
    "leave in": "keep", "keep in": "keep", "leave out": "imperative", "except": "imperative",
}
# "don't want/like/need X": X is something the user wants gone, unless X is an action or a
# quality ("I don't want it brighter").
WANT_WORDS = ("want", "like", "need", "wanna")
OR_WORDS = ("or",)  # "nor" is a negation of its own
SEPARATORS = ("and", "but", "also", "plus", "while", "as well as", "as well", "&", "however",
              "although", "though")
# Order markers. then: the next clause comes later; first/finally: to the front/back;
# before/after: relative, and reversed when they open a sentence ("after X, Y").
SEQUENCE: dict[str, str] = {
    "then": "then", "and then": "then", "after that": "then", "afterwards": "then",
    "afterward": "then", "next": "then", "subsequently": "then", "followed by": "then",
    "later": "then", "once done": "then", "once that is done": "then", "when done": "then",
    "first": "first", "firstly": "first", "first of all": "first", "start by": "first",
    "to begin": "first", "begin by": "first", "initially": "first",
    "finally": "last", "lastly": "last", "last": "last", "at the end": "last",
    "in the end": "last", "at last": "last", "to finish": "last",
    "before": "before", "prior to": "before", "after": "after", "once": "after",
}
MULTIPLIERS: dict[str, float] = {"double": 2, "doubled": 2, "twice": 2, "two fold": 2,
                                 "triple": 3, "tripled": 3, "thrice": 3, "three fold": 3,
                                 "quadruple": 4, "quadrupled": 4, "four fold": 4}
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "eight": 8, "ten": 10}
# Target sizes. K: long side (3840 x 2160 is "4K UHD"); p: short side (1920 x 1080 is 1080p).
K_LONG_SIDE = {1: 1024, 2: 2048, 4: 3840, 5: 5120, 6: 6144, 8: 7680, 10: 10240, 12: 12288, 16: 15360}
NAMED_TARGETS = {"full hd": ("target_short_side", 1080), "fhd": ("target_short_side", 1080),
                 "qhd": ("target_short_side", 1440), "uhd": ("target_long_side", 3840),
                 "ultra hd": ("target_long_side", 3840)}

# Common English words that must never be read as a typo of a lexicon word
# ("blue" is not "blur", "most" is not "mist", "black" is not "block").
COMMON_WORDS = set("""
a about above after again against all almost also always am an and any anything are around as
at away back bad be because been before being below best between big bit black blue body both
bottom brain bring but by can car cat change city clock close cold colon contest contract create
created creating could day did different do does dog done door down each eat else enough even
ever every everything eye eyes face fact far feel few find fine first five for four friend from
front full gain get give go going gone good got grail grin groin hair half hand has have he head
hear help her here high him his hold home hot house how i if in inside into is it its just keep
kind know land last late left less let life like line little long look lot love made main make
man many may me mean might mine mind miss more most much must my name near need never new next
nice night no nor nose not now of off old on once one only open or other our out over own page
part people photo picture place plan play please point put rail raid rains rather read real
really red rein right road room rose ruin run said same saw say see seem shade shape shame share
shark she should show side since small so some something soon sort speak spear spec specs stand
start steak still stomp stream stump sure swamp swear shear take talk tell than that the their
them then there these they thing think this those though three through time to too top train
tree true try turn two under until up us use very walk wall want was water way we well went were
what when where which while who why will wish with without word work world would year yes yet you
young your caution captain crimp lapel soot sofa sift dart dank dork darn cease mast must mint
most dime blues bluer blurb bloc mole mold gold hold bold told fold cold sold colt plus""".split())

# Function words that show a sentence is English (for the language check).
ENGLISH_WORDS = set("""
the a an this that it its is are was my me i you your please and of in on to from with make
remove fix can could would should too so very more less be get rid image photo picture pic up
out all some take want need look looks improve reduce clean correct help just bit lot""".split())

# Frequent function words of languages users may write in instead (Latin script).
FOREIGN_WORDS = {
    "French": set("le la les des du une et est pour avec dans sur pas trop cette ce très "
                  "enlève enlever enleve supprime supprimer retire retirer rends rendre mon ma "
                  "mes moi s'il vous plaît plait pluie bruit flou brouillard sombre "
                  "netteté nette c'est l'image qu'il au aux".split()),
    "Spanish": set("el los las una y es por con para muy quita quitar elimina eliminar esta está "
                   "mi haz hazla imagen foto demasiado del al lluvia ruido borrosa niebla oscura "
                   "quítale quitale favor".split()),
    "German": set("der die das und ist bitte entferne entfernen mach mache zu ein eine nicht mit "
                  "von bild foto dem ich mein meine sehr regen rauschen unscharf nebel "
                  "dunkel heller schärfer".split()),
    "Italian": set("il lo gli della dalla rimuovi togli troppo è questa questo foto immagine "
                   "rendi molto pioggia rumore sfocata nebbia scura".split()),
    "Portuguese": set("o os da remova remover tire muito esta imagem foto chuva ruído ruido "
                      "desfocada névoa escura por favor".split()),
}


# ------------------------------------------------------------------------------ words
_STEM_EXCEPTIONS = {
    "photographer": "photographer", "photographers": "photographer",
    "tone": "tone", "tones": "tone", "toned": "tone",
    "size": "size", "sizes": "size", "sized": "size",
    "pixel": "pixel", "pixels": "pixel",
    "spots": "spots", "spot": "spots", "spotty": "spots",
    "details": "detail", "detailed": "detail",
    "bigger": "bigger", "larger": "larger", "lightly": "lightly", "hardly": "hardly",
    "yellowed": "yellowed", "yellowing": "yellowed",
    "lit": "lit", "light": "light", "lights": "light", "lighting": "light",
    "news": "news", "its": "its", "it's": "it",
}
_SUFFIXES = ("iness", "ness", "iest", "ier", "ies", "ied", "ing", "est", "ed", "er", "ly",
             "es", "s", "y", "e")


def _stem(word: str) -> str:
    """A light suffix stripper: the same stem for the forms people use of one word
    (noise/noisy/noises, blurry/blurred/blurriness). Not linguistics, just consistent."""
    if word in _STEM_EXCEPTIONS:
        return _STEM_EXCEPTIONS[word]
    if word.endswith("'s"):
        word = word[:-2]
    if not word.isalpha():
        return word
    stem = word
    for suffix in _SUFFIXES:
        if stem.endswith(suffix) and len(stem) - len(suffix) >= 3:
            stem = stem[: -len(suffix)]
            break
    # a second, final -y/-e ("grainey" -> grain, "bluryy" -> blur)
    if len(stem) >= 4 and stem[-1] in "ye" and stem != word:
        stem = stem[:-1]
    # undouble ("blurr" -> blur, "fogg" -> fog) but keep -ss/-ll words
    if len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] not in "sl":
        stem = stem[:-1]
    return stem


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insert, delete, substitute, swap neighbours)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


_TOKEN_RE = re.compile(r"x\d+(?:\.\d+)?(?!\w)|\d+(?:\.\d+)?[a-z]*|[^\W\d_]+(?:'[^\W\d_]+)?|[,;.!?:%&]")


@dataclass
class _Token:
    raw: str
    stem: str
    start: int
    end: int


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").replace("\u00d7", "x")
    return re.sub(r"[-_/\u2013\u2014]", " ", text)


def _tokenize(text: str) -> list[_Token]:
    return [_Token(m.group(), _stem(m.group()), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def _phrase_stems(phrase: str) -> tuple[str, ...]:
    return tuple(t.stem for t in _tokenize(_normalise(phrase)))


# ------------------------------------------------------------------------------ index
@dataclass(frozen=True)
class _Entry:
    kind: str        # term, weak, strength, neg, want, or, sep, seq, mult
    value: object    # task / weight / strength / negation type / order marker / factor
    detail: str = ""  # term kind (problem/action/quality); weak: task


def _build_index() -> dict[tuple[str, ...], list[_Entry]]:
    index: dict[tuple[str, ...], list[_Entry]] = {}

    def add(phrase: str, entry: _Entry):
        key = _phrase_stems(phrase)
        if key and entry not in index.setdefault(key, []):
            index[key].append(entry)

    for task, kinds in LEXICON.items():
        for kind, entries in kinds.items():
            for phrase in filter(None, (e.strip() for e in entries.split(","))):
                add(phrase, _Entry("term", task, kind))
    for task, words in WEAK.items():
        for phrase, weight in words.items():
            add(phrase, _Entry("weak", weight, task))
    for phrase, value in STRENGTH_WORDS.items():
        add(phrase, _Entry("strength", value))
    for phrase, kind in NEGATIONS.items():
        add(phrase, _Entry("neg", kind))
    for phrase in WANT_WORDS:
        add(phrase, _Entry("want", None))
    for phrase in OR_WORDS:
        add(phrase, _Entry("or", None))
    for phrase in SEPARATORS:
        add(phrase, _Entry("sep", None))
    for phrase, marker in SEQUENCE.items():
        add(phrase, _Entry("seq", marker))
    for phrase, factor in MULTIPLIERS.items():
        add(phrase, _Entry("mult", factor))
    return index


_INDEX = _build_index()
_MAX_PHRASE = max(len(k) for k in _INDEX)
_KNOWN_STEMS = {_stem(w) for w in COMMON_WORDS} | COMMON_WORDS
# Typo targets: single-word lexicon terms of 4+ letters (shorter words collide too easily).
_TYPO_TARGETS: dict[str, list[str]] = {}
for _key, _entries in sorted(_INDEX.items()):
    if len(_key) == 1 and len(_key[0]) >= 4 and _key[0].isalpha() and any(e.kind in ("term", "weak") for e in _entries):
        _TYPO_TARGETS.setdefault(_key[0][0], []).append(_key[0])
_FIRST_STEMS = {k[0] for k in _INDEX}  # words the lexicon knows (alone or opening a phrase)


def _typo_target(stem: str) -> str | None:
    """The lexicon stem a misspelt word most likely meant, or None. Allowed: one edit for
    words of 5-8 letters, two for longer ones, only a swap of neighbours for 4-letter words;
    the first letter must match (people rarely mistype it)."""
    if len(stem) < 4 or not stem.isascii() or not stem.isalpha() or stem in _KNOWN_STEMS:
        return None
    best, best_distance, tie = None, 9, False
    for target in _TYPO_TARGETS.get(stem[0], ()):
        limit = 1 if len(target) <= 8 else 2
        if len(target) == 4 and (len(stem) != 4 or sorted(stem) != sorted(target)):
            continue
        distance = _edit_distance(stem, target, limit)
        if distance <= limit:
            if distance < best_distance:
                best, best_distance, tie = target, distance, False
            elif distance == best_distance:
                tie = True
    return None if tie else best


@dataclass
class _Item:
    kind: str            # an _Entry kind, or "word", "punct", "scale", "number"
    entries: list
    start: int           # character span in the normalised text
    end: int
    raw: str


_SCALE_RE = re.compile(r"^(?:x(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)x)$")
_TARGET_RE = re.compile(r"^(\d+(?:\.\d+)?)(k|p|px)$")


def _items(tokens: list[_Token], notes: list[str]) -> list[_Item]:
    """Tokens -> matched items (phrases longest first, typos corrected)."""
    stems = []
    for tok in tokens:
        stem = tok.stem
        if stem not in _FIRST_STEMS and tok.raw.isalpha():
            target = _typo_target(stem)
            if target is not None:
                notes.append(f"read {tok.raw!r} as a typo for {target!r}")
                stem = target
        stems.append(stem)

    items: list[_Item] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            key = tuple(stems[i:i + n])
            if key in _INDEX:
                entries = _INDEX[key]
                end_tok = tokens[i + n - 1]
                items.append(_Item(entries[0].kind, entries, tok.start, end_tok.end,
                                   " ".join(t.raw for t in tokens[i:i + n])))
                i += n
                break
        else:
            raw = tok.raw
            if raw in ",;.!?:":
                items.append(_Item("punct", [], tok.start, tok.end, raw))
            elif _SCALE_RE.match(raw):
                m = _SCALE_RE.match(raw)
                items.append(_Item("scale", [{"scale": _number(m.group(1) or m.group(2))}],
                                   tok.start, tok.end, raw))
            elif _TARGET_RE.match(raw):
                items.append(_target_item(tok))
            elif re.fullmatch(r"\d+(?:\.\d+)?", raw) or raw in NUMBER_WORDS:
                items.append(_Item("number", [_number(raw) if raw[0].isdigit() else NUMBER_WORDS[raw]],
                                   tok.start, tok.end, raw))
            elif raw == "%":
                items.append(_Item("percent", [], tok.start, tok.end, raw))
            else:
                items.append(_Item("word", [], tok.start, tok.end, raw))
            i += 1
    return _fold_numbers(items)


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


def _target_item(tok: _Token) -> _Item:
    m = _TARGET_RE.match(tok.raw)
    value, unit = float(m.group(1)), m.group(2)
    if unit == "k":
        option = {"target_long_side": K_LONG_SIDE.get(int(value), int(value * 1000))}
    elif unit == "p":
        option = {"target_short_side": int(value)}
    else:
        option = {"target_long_side": int(value)}
    return _Item("scale", [option], tok.start, tok.end, tok.raw)


def _fold_numbers(items: list[_Item]) -> list[_Item]:
    """Number phrases: "4 x" / "x 4" -> scale; "2 times", "3 fold", "by 2", "by a factor of 2",
    "200 %" -> multipliers; "3000 pixels" -> target size."""

    def source_words(first: _Item, last: _Item) -> str:
        return " ".join(it.raw for it in items if first.start <= it.start and it.end <= last.end)

    out: list[_Item] = []
    i = 0
    while i < len(items):
        item = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if item.kind == "number" and nxt is not None:
            value = item.entries[0]
            if nxt.raw == "x":
                out.append(_Item("scale", [{"scale": value}], item.start, nxt.end, f"{item.raw} x"))
                i += 2
                continue
            if nxt.raw in ("times", "fold"):
                out.append(_Item("mult", [_Entry("mult", value)], item.start, nxt.end, f"{item.raw} {nxt.raw}"))
                i += 2
                continue
            if nxt.kind == "percent" and value >= 150:
                out.append(_Item("mult", [_Entry("mult", _number(str(value / 100)))], item.start, nxt.end, f"{item.raw}%"))
                i += 2
                continue
            if nxt.kind == "term" and nxt.raw in ("pixels", "pixel", "px") and value >= 100:
                out.append(_Item("scale", [{"target_long_side": int(value)}], item.start, nxt.end,
                                 f"{item.raw} {nxt.raw}"))
                i += 2
                continue
        if item.raw == "x" and nxt is not None and nxt.kind == "number":
            out.append(_Item("scale", [{"scale": nxt.entries[0]}], item.start, nxt.end, f"x {nxt.raw}"))
            i += 2
            continue
        if item.raw in ("by", "factor") and nxt is not None and nxt.raw == "of" and i + 2 < len(items):
            nxt = items[i + 2]  # "by a factor of 2"
            i += 1
        if item.raw in ("by", "factor") and nxt is not None and nxt.kind == "number":
            after = items[i + 2] if i + 2 < len(items) else None
            if not (after is not None and after.kind == "percent"):  # "by 300%": the % rule
                out.append(_Item("mult", [_Entry("mult", nxt.entries[0])], item.start, nxt.end,
                                 source_words(item, nxt)))
                i += 2
                continue
        out.append(item)
        i += 1
    return out


# ------------------------------------------------------------------------------ grammar
@dataclass
class _Hit:
    task: str
    kind: str            # problem / action / quality / weak
    clause: int
    start: int
    end: int
    weight: float = 0.0
    excluded: bool = False
    negation: str = ""   # the words that excluded it
    options: dict = field(default_factory=dict)
    words: str = ""      # the words that named it


@dataclass
class _Clause:
    key: float
    start: int = -1
    end: int = -1
    strength: float | None = None
    multipliers: list = field(default_factory=list)

    def cover(self, start: int, end: int):
        self.start = start if self.start < 0 else self.start
        self.end = end


# (negation type, term kind) -> True when the term is excluded, False when it is requested.
_NEGATION_EXCLUDES = {
    "imperative": {"problem": True, "action": True, "generic": True, "quality": True},
    "state": {"problem": True, "action": True, "generic": True, "quality": False},
    "nominal": {"problem": False, "action": True, "generic": True, "quality": False},
    "less": {"problem": False, "action": True, "generic": True, "quality": True},
    "keep": {"problem": True, "action": True, "generic": True, "quality": None},  # None: neither ("keep it sharp")
}
# "<problem> removal/reduction/...": the problem word names the operation ("no text removal").
_OPERATION_NOUNS = {_stem(w) for w in ("removal", "reduction", "correction", "remover", "filter",
                                        "cleanup", "fix", "fixing", "suppression")}
# In a clause about faces ("the face is blurry", "denoise the faces") blur and noise are the
# faces' own, for the face network; unless the clause names motion, which blurs the whole photo.
_FACE_ABSORBS = ("deblur", "denoise", "jpeg")
_MOTION = {_stem(w) for w in ("motion", "shake", "shook", "shaking", "jitter", "jittery", "smear", "smeared",
                              "ghosting", "moved", "moving")}
# Words that say text is to be read, so it must be kept and made sharp, not removed.
_READABILITY = {_stem(w) for w in ("unreadable", "illegible", "readable", "legible", "read")}
_NEGATION_WINDOW = 6  # words between a negation and what it negates


def _read(items: list[_Item], text: str) -> tuple[list[_Clause], list[_Hit]]:
    """Walk the items: split clauses, give each an order key, apply negations."""
    clauses = [_Clause(key=0.0)]
    hits: list[_Hit] = []
    negation = None   # dict(kind, start, window, armed)
    sentence_empty = True
    pending_key = None  # key of the clause after the next punctuation ("after X, Y")

    def new_clause(key: float, at_punctuation: bool = False):
        nonlocal negation, pending_key
        if at_punctuation and pending_key is not None:
            key, pending_key = pending_key, None
        negation = None
        current = clauses[-1]
        if current.start < 0 and current.strength is None and not current.multipliers:
            current.key = key  # nothing said yet: reuse the empty clause
        else:
            clauses.append(_Clause(key=key))

    for position, item in enumerate(items):
        clause = clauses[-1]
        if item.kind == "punct":
            new_clause(clause.key, at_punctuation=True)
            if item.raw in ".!?":
                sentence_empty = True
            continue
        if item.kind == "sep":
            new_clause(clause.key)
            continue
        if item.kind == "seq":
            marker = item.entries[0].value
            if marker == "then":
                new_clause(clause.key + 1)
            elif marker == "first":
                new_clause(-1000.0 + len(clauses))
            elif marker == "last":
                new_clause(1000.0 + len(clauses))
            elif marker == "before":
                if sentence_empty:        # "before X, Y": X comes after Y
                    pending_key = clause.key
                    new_clause(clause.key + 1)
                else:                     # "X before Y"
                    new_clause(clause.key + 1)
            elif marker == "after":
                if sentence_empty:        # "after X, Y": natural order
                    pending_key = clause.key + 1
                else:                     # "X after Y": Y comes first
                    new_clause(clause.key - 0.5)
            continue

        sentence_empty = False
        clause.cover(item.start, item.end)
        index = len(clauses) - 1
        if item.kind == "neg":
            negation = {"kind": item.entries[0].value, "start": item.start, "window": _NEGATION_WINDOW,
                        "armed": True}
            continue
        if item.kind == "want" and negation and negation["kind"] == "imperative":
            negation["kind"] = "less"
            continue
        if item.kind == "or" and negation:
            negation["armed"], negation["window"] = True, _NEGATION_WINDOW
            continue
        if item.kind == "strength":
            if clause.strength is None:
                clause.strength = item.entries[0].value
            continue
        if item.kind == "mult":
            clause.multipliers.append((item.entries[0].value, item.raw))
            continue
        if item.kind == "weak":
            for entry in (e for e in item.entries if e.kind == "weak"):
                hits.append(_Hit(entry.detail, "weak", index, item.start, item.end, weight=entry.value))
            _tick(negation)
            continue
        if item.kind in ("term", "scale"):
            if item.kind == "scale":
                found = [("superres", "action", dict(item.entries[0]))]
            else:
                found = [(e.value, e.detail, {}) for e in item.entries if e.kind == "term"]
            end = item.end
            following = items[position + 1] if position + 1 < len(items) else None
            if following is not None and _stem(following.raw) in _OPERATION_NOUNS:
                found = [(task, "action" if kind == "problem" else kind, options) for task, kind, options in found]
                end = following.end
            for task, kind, options in found:
                hit = _Hit(task, kind, index, item.start, end, options=options, words=item.raw)
                if negation and negation["armed"] and negation["window"] > 0:
                    excluded = _NEGATION_EXCLUDES[negation["kind"]][kind]
                    if excluded is None:
                        continue
                    hit.excluded = excluded
                    if excluded:
                        hit.negation = text[negation["start"]:end]
                hits.append(hit)
            if negation and negation["armed"]:
                negation["armed"], negation["window"] = False, 0  # only "or"/"nor" extends it
            continue
        _tick(negation)
    return clauses, hits


def _tick(negation):
    if negation:
        negation["window"] -= 1


# ------------------------------------------------------------------------------ language
def _foreign_script(text: str) -> str | None:
    """The name of a non-Latin script most of the letters are in, if any."""
    letters = [c for c in text if c.isalpha()]
    foreign = [c for c in letters if ord(c) > 0x24F and not 0x1E00 <= ord(c) <= 0x1EFF]
    if not letters or len(foreign) / len(letters) < 0.3:
        return None
    names = {}
    for c in foreign:
        script = unicodedata.name(c, "UNKNOWN").split()[0]
        script = {"CJK": "Chinese/Japanese", "HIRAGANA": "Japanese", "KATAKANA": "Japanese",
                  "HANGUL": "Korean"}.get(script, script.title())
        names[script] = names.get(script, 0) + 1
    return max(names, key=names.get) + " script"


def _foreign_language(tokens: list[_Token]) -> tuple[str | None, int, int]:
    """(likely language, its word count, English word count) for Latin-script text."""
    words = [t.raw for t in tokens if t.raw[0].isalpha()]
    english = sum(w in ENGLISH_WORDS for w in words)
    counts = {lang: sum(w in vocab for w in words) for lang, vocab in FOREIGN_WORDS.items()}
    lang = max(counts, key=counts.get)
    accents = sum(any(ord(c) > 127 for c in w) for w in words)
    if counts[lang] == 0 and accents == 0:
        return None, 0, english
    return lang, counts[lang] + accents, english


# ------------------------------------------------------------------------------ readability
# Text that is not an instruction must be refused, not guessed at: a few accidental matches
# in random characters ("x7", a "typo" of smoke) would otherwise become a plan.
MAX_INSTRUCTION_CHARS = 1000  # a sentence or a few; a pasted page is not an instruction
_VOWELS = frozenset("aeiouy")
# Letter pairs that do not occur inside English words (q is only followed by u).
_NON_ENGLISH_PAIRS = frozenset("""
bq bx bz cj cv cx dx fq fx fz gq gx gz hx hz jb jc jd jf jg jh jk jl jm jn jp jq jr js jt jv
jw jx jy jz kq kx kz lx mx mz pq px pz qb qc qd qf qg qh qj qk ql qm qn qp qq qr qs qt qv qw qx
qy qz sx tq tx vb vf vj vk vm vq vw vx vz wj wq wx xj xk xq xz zj zq zv zx""".split())
# Chat shorthand that has no vowel or is too short to look like a word.
_SHORTHAND = frozenset("pls plz thx thnx ty ok okay u ur im pic pics img imgs bg hd sry".split())
# Characters an instruction does not need; a few are fine ("make it pop :)"), many are noise.
_PLAIN_PUNCTUATION = frozenset(".,;:!?'\"()-/%&+ ")


def _wordlike(word: str) -> bool:
    """Could this unknown word be English (a name, a word restorer has no use for)? Random
    letters mostly fail: no vowel, five consonants in a row, a pair English never has."""
    if len(word) == 1:
        return word in "ai"
    if len(word) > 20 or not _VOWELS & set(word):
        return False
    if re.search(r"[^aeiouy]{5}|(.)\1\1", word):
        return False
    return not any(word[i:i + 2] in _NON_ENGLISH_PAIRS for i in range(len(word) - 1))


def _unreadable(original: str, tokens: list[_Token]) -> str | None:
    """Why the text does not read as an instruction at all, or None."""
    symbols = [c for c in original if (c.isascii() and not c.isalnum() and not c.isspace()
                                       and c not in _PLAIN_PUNCTUATION)
               or (unicodedata.category(c) == "Cc" and c not in "\n\r\t")]
    visible = sum(not c.isspace() for c in original)
    if len(symbols) >= 3 and len(symbols) > 0.1 * visible:
        return "it is mostly symbols"
    words = [t for t in tokens if t.raw[0].isalpha()]
    noise = sum(len(t.raw) for t in words
                if not (t.stem in _FIRST_STEMS or t.stem in _KNOWN_STEMS or t.raw in ENGLISH_WORDS
                        or t.raw in _SHORTHAND or _wordlike(t.raw.replace("'", ""))
                        or _typo_target(t.stem) is not None))
    letters = sum(len(t.raw) for t in words)
    if noise >= 6 and 2 * noise >= letters:
        return "most of its letters form no words"
    return None


def _quote(text: str, limit: int = 40) -> str:
    """The user's text for a one-line message: stripped, shortened, escaped."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _english_only(what: str) -> InstructionError:
    return InstructionError(f"restorer understands instructions in English only (this looks like {what}); "
                            + EXAMPLES)


# ------------------------------------------------------------------------------ plan
def plan(text: str) -> ParsedInstruction:
    """Read an instruction in English into an ordered list of restoration steps."""
    original = text if isinstance(text, str) else ""
    if not original.strip():
        raise InstructionError("no instruction given: " + EXAMPLES)
    script = _foreign_script(original)
    if script:
        raise _english_only(script)

    if len(original) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(f"an instruction is a sentence or a few, not {len(original)} characters "
                               f"(at most {MAX_INSTRUCTION_CHARS}); " + EXAMPLES)

    normalised = _normalise(original)
    tokens = _tokenize(normalised)
    lang, foreign_count, english_count = _foreign_language(tokens)
    if lang and foreign_count >= 2 and foreign_count > english_count:
        raise _english_only(lang)
    why = _unreadable(original, tokens)
    if why:
        raise InstructionError(f"could not tell what to do from {_quote(original)}: it does not read as an "
                               f"instruction ({why}); " + EXAMPLES)

    notes: list[str] = []
    items = _items(tokens, notes)
    clauses, hits = _read(items, original if len(original) == len(normalised) else normalised)
    steps = _steps(clauses, hits, original, normalised, notes)
    if steps is None:
        if lang and foreign_count >= english_count:
            raise _english_only(lang)
        raise InstructionError(f"could not tell what to do from {_quote(original)}; " + EXAMPLES)
    _mark_generative(steps, normalised, notes)
    return ParsedInstruction(steps=steps, text=original, notes=notes)


# Asking for detail that is not in the photo: a generative (diffusion) upscale, when one is
# installed ("upscale 4x and add detail", "generative upscale", "invent detail").
GENERATIVE_CUES = re.compile(r"\b(generative(ly)?|invent(s|ed|ing)?|hallucinat\w*|diffusion|"
                             r"(add|adds|adding|create|creating|more|new|fine|made[- ]up|extra) (fine |more |new |extra )?details?)\b")
SIZE_CUES = re.compile(r"\b(big|bigger|large|larger|enlarge\w*|upscal\w*|high[- ]res\w*|blow (it )?up)\b")


def _mark_generative(steps: list[Intent], text: str, notes: list[str]) -> None:
    """Mark the upscale as generative when the words ask for invented detail; add one when
    they ask for detail and size but no upscale was read ("make it big, invent detail")."""
    cue = GENERATIVE_CUES.search(text.lower())
    if cue is None:
        return
    upscales = [s for s in steps if s.task == "superres"]
    if not upscales and SIZE_CUES.search(text.lower()):
        at = next((i for i, s in enumerate(steps) if s.task == "faces"), len(steps))
        steps.insert(at, Intent("superres", {}, cue.group(0)))
        upscales = [steps[at]]
    for step in upscales:
        step.options["generative"] = True
    if upscales:
        notes.append(f"'{cue.group(0)}': a generative upscale, which invents detail")


def _steps(clauses: list[_Clause], hits: list[_Hit], original: str, normalised: str,
           notes: list[str]) -> list[Intent] | None:
    source = original if len(original) == len(normalised) else normalised

    def words(start: int, end: int) -> str:
        return source[start:end].strip(" ,;:.!?")

    excluded = {}
    for hit in hits:
        if hit.excluded and hit.task not in excluded:
            excluded[hit.task] = hit.negation
    for task, negation in excluded.items():
        notes.append(f'skipping {task}: "{negation}"')

    requested = [h for h in hits if h.kind != "weak" and not h.excluded and h.task not in excluded]
    # "enhance the resolution": the generic verb goes with the other task in its clause
    requested = [h for h in requested if h.kind != "generic"
                 or not any(o.clause == h.clause and o.task != h.task for o in requested)]
    # "the text is unreadable": text to read is kept (and sharpened), not removed
    reading = {h.clause for h in hits if not h.excluded and _READABILITY & set(_phrase_stems(h.words))}
    if any(h.task == "remove-text" and h.clause in reading for h in requested):
        notes.append("keeping the text: it is meant to be read")
        requested = [h for h in requested if not (h.task == "remove-text" and h.clause in reading)]

    # "the face is blurry": the blur is the face's, for the face network (not for motion)
    face_clauses = {h.clause for h in requested if h.task == "faces"}
    motion = {h.clause for h in hits if h.task == "deblur" and _MOTION & set(_phrase_stems(h.words))}
    absorbed = [h for h in requested if h.task in _FACE_ABSORBS and h.clause in face_clauses - motion]
    if absorbed:
        requested = [h for h in requested if h not in absorbed]
        said = ", ".join(dict.fromkeys(repr(h.words) for h in absorbed))
        notes.append(f"read {said} as about the faces: the face network restores them")

    # multipliers ("double", "2 times", "by 300%") scale a superres step in their clause, or
    # are one when the clause names no other task ("double it")
    for index, clause in enumerate(clauses):
        for factor, raw in clause.multipliers:
            in_clause = [h for h in requested if h.clause == index]
            target = next((h for h in in_clause if h.task == "superres"), None)
            if target is not None:
                target.options.setdefault("scale", factor)
            elif not in_clause and "superres" not in excluded:
                requested.append(_Hit("superres", "action", index, clause.start, clause.end,
                                       options={"scale": factor}))
            else:
                notes.append(f"ignored {raw!r}: no upscaling asked for there")

    # a strength said in a clause of its own ("..., but just a little") belongs to the one before
    for index, clause in enumerate(clauses):
        if clause.strength is not None and index > 0 and not any(h.clause == index for h in requested):
            previous = clauses[index - 1]
            if previous.strength is None:
                previous.strength = clause.strength

    if not requested:
        return _fallback(hits, excluded, clauses, original, notes)

    by_task: dict[str, list[_Hit]] = {}
    for hit in requested:
        by_task.setdefault(hit.task, []).append(hit)

    steps = []
    for task, task_hits in by_task.items():
        options: dict = {}
        for hit in task_hits:
            for key, value in hit.options.items():
                options.setdefault(key, value)
        clause_ids = list(dict.fromkeys(h.clause for h in task_hits))
        strength = next((clauses[c].strength for c in clause_ids if clauses[c].strength is not None), None)
        if strength is not None:
            options["strength"] = strength
        prompt = "; ".join(words(clauses[c].start, clauses[c].end) for c in clause_ids)
        key = clauses[task_hits[0].clause].key
        steps.append((key, CANONICAL_ORDER.index(task), Intent(task, options, prompt)))
    steps.sort(key=lambda s: (s[0], s[1]))
    result = [s[2] for s in steps]
    if len(result) == 1 and not excluded:
        result[0].prompt = original.strip()  # one task: all the user's words are about it
    return result


def _fallback(hits: list[_Hit], excluded: dict, clauses: list[_Clause], original: str,
              notes: list[str]) -> list[Intent] | None:
    """Nothing clear was named: the best weak cue decides ("make it better" -> enhance)."""
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.kind == "weak" and hit.task not in excluded:
            scores[hit.task] = scores.get(hit.task, 0.0) + hit.weight
    if not scores:
        if excluded:
            raise InstructionError("nothing to do: the instruction only says what not to do ("
                                   + " ".join("; ".join(notes).split()) + "); " + EXAMPLES)
        return None
    task = max(scores, key=lambda t: (scores[t], -CANONICAL_ORDER.index(t)))
    options = {}
    strength = next((c.strength for c in clauses if c.strength is not None), None)
    if strength is not None:
        options["strength"] = strength
    notes.append(f"no specific problem named; read as {task}")
    return [Intent(task, options, original.strip())]


def resolve_scale(options: dict, width: int, height: int, available=(2, 3, 4, 8)) -> int:
    """The upscaling factor a superres step needs for an image of width x height: the
    explicit "scale", else the smallest available factor that reaches the target side
    (the largest available when none does; 1 when the image is already big enough).
    The caller resizes down afterwards when the factor overshoots the target."""
    if "scale" in options:
        return options["scale"]
    need = 0.0
    if "target_long_side" in options:
        need = options["target_long_side"] / max(width, height)
    elif "target_short_side" in options:
        need = options["target_short_side"] / min(width, height)
    if need <= 1.0:
        return 1 if need else min(available)
    fitting = [s for s in sorted(available) if s >= need]
    return fitting[0] if fitting else max(available)


# ------------------------------------------------------------------------------ help
_EXAMPLES = {
    "denoise": '"remove the noise", "it\'s too grainy", "high ISO speckles"',
    "deblur": '"fix the blur", "it\'s out of focus", "sharpen it", "camera shake"',
    "derain": '"remove the rain", "raindrops on the lens", "rain streaks"',
    "dehaze": '"remove the haze", "too foggy", "smog", "misty"',
    "lowlight": '"it\'s too dark", "brighten it", "underexposed", "shot at night"',
    "enhance": '"make the colours pop", "washed out", "retouch it like a pro"',
    "superres": '"upscale 2x", "make it bigger", "to 4K", "higher resolution"',
    "jpeg": '"remove JPEG artifacts", "blocky compression"',
    "old-photo": '"restore this old photo", "scratches", "faded vintage print"',
    "remove-text": '"remove the watermark", "erase the caption", "subtitles", "logo"',
    "faces": '"fix the faces", "restore the face", "the face is blurry", "enhance faces"',
}


# The end of every one-line refusal: what would have worked.
EXAMPLES = ('say what is wrong in English, e.g. "remove the noise", "it\'s too dark", "upscale 2x", '
            '"remove the watermark"')


def describe_vocabulary() -> str:
    """What restorer understands, as a short list of example phrases per task."""
    lines = ["restorer understands English instructions such as:"]
    lines += [f"  {task:<12}{_EXAMPLES[task]}" for task in TASKS]
    lines.append('Several at once and their order: "remove the rain then upscale 2x". '
                 'Strength: "slightly", "a bit", "a lot". '
                 'Negation: "don\'t upscale", "keep the grain", "no sharpening".')
    return "\n".join(lines)


# ------------------------------------------------------------------------------ accuracy
# Labels of instruction data sets (InstructIR's among them) -> restorer tasks. InstructIR's
# "ambiguous" prompts ("make it pop") are served by general enhancement.
LABEL_ALIASES = {"superresolution": "superres", "sr": "superres", "denoising": "denoise",
                 "deblurring": "deblur", "deraining": "derain", "dehazing": "dehaze",
                 "lol": "lowlight", "enhancement": "enhance", "other": "enhance",
                 "ambiguous": "enhance"}


def accuracy(path, misses: list | None = None) -> float:
    """Share of records {"instruction", "task"} in a JSON file whose first planned step is
    the labelled task. Misses (instruction, label, got) are appended to `misses` if given."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    correct = 0
    for record in records:
        label = LABEL_ALIASES.get(record["task"], record["task"])
        try:
            steps = plan(record["instruction"]).steps
            got = steps[0].task if steps else None
        except InstructionError:
            got = None
        if got == label:
            correct += 1
        elif misses is not None:
            misses.append((record["instruction"], label, got))
    return correct / len(records) if records else 0.0
