"""Planted-defect vision-language instruction sets for ``bench_quality.py``, built from offline data only.

``python benchmarks/quality_data.py --variant A --n 600 --out DIR`` writes ``DIR/data.json`` (LLaVA format, one
image per row under ``DIR/images/``) and ``DIR/labels.jsonl`` with one line per row::

    {"id": "a-00017", "defect": null | "<kind>", "group": "exact-3" | "near-5" | null, "detail": "...",
     "source": "easy-vqa" | "photo", "topic": "easy-vqa:circle-red/color"}

Clean rows are answers a careful annotator would write: full sentences built from the easy-VQA labels (one
64x64 shape image per row; the colour and shape of every image are read from easy-VQA's own question/answer
pairs) and from captions of the scikit-image sample photos (written from the first docstring line of each
``skimage.data`` loader that works offline) plus scikit-learn's two sample photos, each photo asked up to three
different questions. Answer templates vary, and some clean answers are short but complete ("It is blue.").

Defects (:data:`DEFECT_SHARES` of the rows, 30% in all; counts are exact for a given ``n``):

- ``empty``: empty or whitespace answers (the loader marks those rows as errors) and trivial ones judged against
  the question: "ok", "Yes." to an open question, the question repeated.
- ``truncated``: a long correct answer cut mid-word or mid-sentence.
- ``gibberish``: random letters, keyboard mash, the answer's words shuffled, mojibake (UTF-8 read as cp1252,
  twice), and in variant B random character noise.
- ``unrelated``: a fluent answer of another row of the other source (a photo caption for a shape question, a
  shape answer for a photo question).
- ``wrong_language``: fluent sentences in French/German/Spanish (A) or Italian/Portuguese/Dutch (B), from a
  small bank of hand-translated templates and captions.
- ``exact_duplicate``: a clean row repeated with a new id (identical image bytes in a new file, identical
  messages); groups of 2-4 rows. The first row of a group is clean (``defect`` null) and carries the group id.
- ``near_duplicate``: a clean row's image re-encoded as JPEG, cropped, resized and/or brightness-shifted, with
  the same question and a reworded answer; groups of 2-4, the first row clean as above.
- ``image_mismatch``: a correct-sounding answer to the row's question about another image.

Variant B uses other question phrasings, other answer templates, other languages and another seed, so that a
method tuned on A can be checked on B. Row order is shuffled and ids say nothing about the defect.

Every random choice comes from one ``random.Random(seed)``; the same variant, ``n`` and seed write byte-identical
files. Needs ``easy-vqa``, ``scikit-image``, ``scikit-learn`` and Pillow (all in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import random
import re
import sys
import time
from collections import Counter

KINDS = (
    "empty",
    "truncated",
    "gibberish",
    "unrelated",
    "wrong_language",
    "exact_duplicate",
    "near_duplicate",
    "image_mismatch",
)
# Shares of all rows; the rest (70%) is clean, including the first row of every duplicate group.
DEFECT_SHARES = {
    "empty": 0.04,
    "truncated": 0.04,
    "gibberish": 0.04,
    "unrelated": 0.04,
    "wrong_language": 0.04,
    "exact_duplicate": 0.03,
    "near_duplicate": 0.04,
    "image_mismatch": 0.03,
}
VARIANTS = ("A", "B")
DEFAULT_SEEDS = {"A": 0, "B": 1}
PHOTO_SHARE = 0.2  # share of photo rows among clean rows and among the bases of defects
PHOTO_SIDE = 256

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")

# skimage.data loader (or "sklearn:<file>") -> (subject, kind of image, caption, short caption). Captions are
# written from the loader's first docstring line and the image itself; plain ASCII on purpose, so that
# non-ASCII text only ever comes from the defects.
PHOTOS = {
    "astronaut": (
        "astronaut Eileen Collins",
        "portrait photograph",
        "A portrait of astronaut Eileen Collins in an orange flight suit, smiling in front of an American flag.",
        "Astronaut Eileen Collins posing with a helmet.",
    ),
    "coffee": (
        "a cup of coffee",
        "photograph",
        "A cup of coffee with latte art on a saucer, photographed from above on a wooden table.",
        "A cup of latte seen from above.",
    ),
    "chelsea": (
        "a tabby cat",
        "photograph",
        "A tabby cat named Chelsea sitting and looking to the side, with striped orange and brown fur.",
        "Chelsea the cat looking to the side.",
    ),
    "rocket": (
        "a Falcon 9 rocket launch",
        "photograph",
        "A Falcon 9 rocket carrying the DSCOVR satellite lifts off from the launch pad in a cloud of smoke.",
        "A rocket lifting off from its launch pad.",
    ),
    "coins": (
        "ancient Greek coins",
        "photograph",
        "Many ancient Greek coins from Pompeii laid out in neat rows on a flat surface.",
        "Rows of old Greek coins.",
    ),
    "hubble_deep_field": (
        "thousands of distant galaxies",
        "telescope image",
        "A deep field image from the Hubble telescope showing thousands of distant galaxies against black space.",
        "Distant galaxies seen by the Hubble telescope.",
    ),
    "camera": (
        "a man with a camera on a tripod",
        "photograph",
        "A man in a dark coat operating a camera on a tripod in an open field.",
        "A photographer working with a tripod camera.",
    ),
    "moon": (
        "the surface of the moon",
        "photograph",
        "A close-up of the cratered surface of the moon, with shadows inside the craters.",
        "Craters on the surface of the moon.",
    ),
    "brick": (
        "a brick wall",
        "texture image",
        "A texture of a brick wall, with thin lines of mortar between the bricks.",
        "A close-up of a brick wall.",
    ),
    "grass": (
        "blades of grass",
        "texture image",
        "A texture of dense blades of grass growing in many directions.",
        "Dense grass seen from above.",
    ),
    "gravel": (
        "small gravel stones",
        "texture image",
        "A texture of small gravel stones of different sizes packed closely together.",
        "A patch of small gravel stones.",
    ),
    "page": (
        "a page of printed text",
        "scanned document",
        "A scanned page of printed text that is unevenly lit, darker toward one side.",
        "An unevenly lit scanned page.",
    ),
    "text": (
        "large printed letters",
        "test image",
        "Large printed letters and numbers on a plain background, used to test corner detection.",
        "Printed letters for corner detection.",
    ),
    "colorwheel": (
        "a color wheel",
        "diagram",
        "A color wheel showing the hues of the spectrum arranged in a circle, fading to white in the middle.",
        "A wheel of rainbow colors.",
    ),
    "immunohistochemistry": (
        "stained tissue",
        "microscope image",
        "A microscope image of tissue with brown immunohistochemical staining and a blue hematoxylin counterstain.",
        "Stained tissue under a microscope.",
    ),
    "retina": (
        "a human retina",
        "medical photograph",
        "A photograph of a human retina showing the bright optic disc and the blood vessels spreading from it.",
        "The back of a human eye.",
    ),
    "cell": (
        "a single cell",
        "microscope image",
        "A microscope image of a single cell floating in saline, with a faint halo around its edge.",
        "A single cell under a microscope.",
    ),
    "clock": (
        "a wall clock",
        "photograph",
        "A motion-blurred photograph of a round wall clock, so its hands and numbers are hard to read.",
        "A blurred wall clock.",
    ),
    "logo": (
        "the scikit-image logo",
        "logo",
        "The scikit-image logo, a stylised snake made of image pixels next to the project name.",
        "The scikit-image logo.",
    ),
    "horse": (
        "a horse",
        "silhouette drawing",
        "A black silhouette of a horse standing sideways on a white background.",
        "The outline of a standing horse.",
    ),
    "checkerboard": (
        "a checkerboard pattern",
        "synthetic test image",
        "A checkerboard pattern of alternating black and white squares.",
        "Black and white squares in a grid.",
    ),
    "binary_blobs": (
        "rounded white blobs",
        "synthetic binary image",
        "Rounded white blobs of different sizes scattered on a black background.",
        "White blobs on black.",
    ),
    "shepp_logan_phantom": (
        "the Shepp-Logan head phantom",
        "simulated scan",
        "The Shepp-Logan phantom, a set of ellipses that imitate a cross-section of a human head.",
        "A simulated scan of a head.",
    ),
    "microaneurysms": (
        "small blood vessels of a retina",
        "medical image",
        "A small crop of a retina photograph with thin blood vessels and tiny dark dots called microaneurysms.",
        "Blood vessels with microaneurysms.",
    ),
    "stereo_motorcycle": (
        "a motorcycle",
        "photograph",
        "A motorcycle parked indoors in front of shelves, seen from the front left side.",
        "A parked motorcycle.",
    ),
    "sklearn:china.jpg": (
        "a Chinese temple among trees",
        "photograph",
        "A traditional Chinese temple with curved roofs surrounded by green trees under a blue sky.",
        "A temple among trees.",
    ),
    "sklearn:flower.jpg": (
        "a pink flower",
        "photograph",
        "A close-up of a pink flower with many petals and a yellow center.",
        "A pink flower in bloom.",
    ),
}
# Hand-translated captions for the wrong-language defects (A: fr/de/es, B: it/pt/nl).
TRANSLATED_CAPTIONS = {
    "fr": {
        "astronaut": "Un portrait de l'astronaute Eileen Collins en combinaison orange, souriante devant un "
        "drapeau américain.",
        "coffee": "Une tasse de café avec un dessin dans la mousse, posée sur une soucoupe et photographiée "
        "d'en haut.",
        "chelsea": "Un chat tigré nommé Chelsea, assis, qui regarde sur le côté.",
        "rocket": "Une fusée Falcon 9 décolle de son pas de tir dans un nuage de fumée.",
        "coins": "De nombreuses pièces grecques anciennes de Pompéi alignées en rangées.",
        "moon": "Un gros plan de la surface de la lune, couverte de cratères.",
        "clock": "Une photographie floue d'une horloge murale ronde.",
        "colorwheel": "Une roue chromatique qui montre toutes les teintes du spectre disposées en cercle.",
    },
    "de": {
        "astronaut": "Ein Porträt der Astronautin Eileen Collins in einem orangefarbenen Fluganzug vor einer "
        "amerikanischen Flagge.",
        "coffee": "Eine Tasse Kaffee mit einem Muster im Milchschaum auf einer Untertasse, von oben fotografiert.",
        "chelsea": "Eine getigerte Katze namens Chelsea sitzt da und schaut zur Seite.",
        "rocket": "Eine Falcon-9-Rakete hebt in einer großen Rauchwolke von der Startrampe ab.",
        "coins": "Viele antike griechische Münzen aus Pompeji, die ordentlich in Reihen liegen.",
        "moon": "Eine Nahaufnahme der mit Kratern übersäten Oberfläche des Mondes.",
        "clock": "Ein verwackeltes Foto einer runden Wanduhr.",
        "colorwheel": "Ein Farbkreis, der alle Farbtöne des Spektrums in einem Kreis zeigt.",
    },
    "es": {
        "astronaut": "Un retrato de la astronauta Eileen Collins con un traje de vuelo naranja, sonriendo delante "
        "de una bandera estadounidense.",
        "coffee": "Una taza de café con arte latte sobre un platillo, fotografiada desde arriba.",
        "chelsea": "Una gata atigrada llamada Chelsea, sentada y mirando hacia un lado.",
        "rocket": "Un cohete Falcon 9 despega de la plataforma de lanzamiento entre una nube de humo.",
        "coins": "Muchas monedas griegas antiguas de Pompeya ordenadas en filas.",
        "moon": "Un primer plano de la superficie de la luna llena de cráteres.",
        "clock": "Una fotografía borrosa de un reloj de pared redondo.",
        "colorwheel": "Una rueda de colores que muestra los tonos del espectro dispuestos en un círculo.",
    },
    "it": {
        "astronaut": "Un ritratto dell'astronauta Eileen Collins in tuta di volo arancione, sorridente davanti a "
        "una bandiera americana.",
        "coffee": "Una tazza di caffè con la schiuma decorata, su un piattino, fotografata dall'alto.",
        "chelsea": "Una gatta tigrata di nome Chelsea, seduta, che guarda di lato.",
        "rocket": "Un razzo Falcon 9 decolla dalla rampa di lancio in una nuvola di fumo.",
        "coins": "Molte monete greche antiche di Pompei disposte in file ordinate.",
        "moon": "Un primo piano della superficie lunare piena di crateri.",
        "clock": "Una fotografia mossa di un orologio da parete rotondo.",
        "colorwheel": "Una ruota dei colori che mostra le tonalità dello spettro disposte in cerchio.",
    },
    "pt": {
        "astronaut": "Um retrato da astronauta Eileen Collins com um macacão de voo laranja, sorrindo em frente a "
        "uma bandeira americana.",
        "coffee": "Uma xícara de café com desenho na espuma, sobre um pires, fotografada de cima.",
        "chelsea": "Uma gata malhada chamada Chelsea, sentada e olhando para o lado.",
        "rocket": "Um foguete Falcon 9 decola da plataforma de lançamento em uma nuvem de fumaça.",
        "coins": "Muitas moedas gregas antigas de Pompeia dispostas em fileiras.",
        "moon": "Um close da superfície da lua, cheia de crateras.",
        "clock": "Uma fotografia tremida de um relógio de parede redondo.",
        "colorwheel": "Um círculo cromático que mostra as cores do espectro dispostas em círculo.",
    },
    "nl": {
        "astronaut": "Een portret van astronaut Eileen Collins in een oranje vliegpak, glimlachend voor een "
        "Amerikaanse vlag.",
        "coffee": "Een kop koffie met latte art op een schoteltje, van bovenaf gefotografeerd.",
        "chelsea": "Een gestreepte kat genaamd Chelsea die rechtop zit en opzij kijkt.",
        "rocket": "Een Falcon 9-raket stijgt op van het lanceerplatform in een grote wolk van rook.",
        "coins": "Veel oude Griekse munten uit Pompeii die netjes in rijen liggen.",
        "moon": "Een close-up van het maanoppervlak vol kraters.",
        "clock": "Een bewogen foto van een ronde wandklok.",
        "colorwheel": "Een kleurenwiel dat alle tinten van het spectrum in een cirkel laat zien.",
    },
}
# Shape answers in other languages: colour words agree with the language's word for "shape"; {lead} is yes/no.
LANGUAGES = {
    "fr": {
        "yes": "Oui",
        "no": "Non",
        "colors": ("rouge", "verte", "bleue", "noire", "grise", "bleu canard", "marron", "jaune"),
        "shapes": ("un cercle", "un rectangle", "un triangle"),
        "color": ("La forme est {c}.", "Dans cette image, la forme est de couleur {c}."),
        "shape": ("C'est {s}.", "L'image contient {s} et rien d'autre."),
        "color_yn": ("{lead}, la forme que l'on voit dans l'image est {c}.",),
        "shape_yn": ("{lead}, l'image contient {s}.",),
    },
    "de": {
        "yes": "Ja",
        "no": "Nein",
        "colors": ("rot", "grün", "blau", "schwarz", "grau", "türkis", "braun", "gelb"),
        "shapes": ("ein Kreis", "ein Rechteck", "ein Dreieck"),
        "color": ("Die Form ist {c}.", "Die Form in diesem Bild hat die Farbe {c}."),
        "shape": ("Es ist {s}.", "Im Bild ist genau {s} zu sehen."),
        "color_yn": ("{lead}, die Form im Bild ist {c}.",),
        "shape_yn": ("{lead}, im Bild ist {s} zu sehen.",),
    },
    "es": {
        "yes": "Sí",
        "no": "No",
        "colors": ("roja", "verde", "azul", "negra", "gris", "turquesa", "marrón", "amarilla"),
        "shapes": ("un círculo", "un rectángulo", "un triángulo"),
        "color": ("La figura es {c}.", "La figura que aparece en la imagen es {c}."),
        "shape": ("Es {s}.", "La imagen contiene {s} y nada más."),
        "color_yn": ("{lead}, la figura de la imagen es {c}.",),
        "shape_yn": ("{lead}, la imagen contiene {s}.",),
    },
    "it": {
        "yes": "Sì",
        "no": "No",
        "colors": ("rossa", "verde", "blu", "nera", "grigia", "turchese", "marrone", "gialla"),
        "shapes": ("un cerchio", "un rettangolo", "un triangolo"),
        "color": ("La forma è {c}.", "La forma che si vede nell'immagine è {c}."),
        "shape": ("È {s}.", "Nell'immagine c'è soltanto {s}."),
        "color_yn": ("{lead}, la forma nell'immagine è {c}.",),
        "shape_yn": ("{lead}, nell'immagine c'è {s}.",),
    },
    "pt": {
        "yes": "Sim",
        "no": "Não",
        "colors": ("vermelha", "verde", "azul", "preta", "cinza", "turquesa", "marrom", "amarela"),
        "shapes": ("um círculo", "um retângulo", "um triângulo"),
        "color": ("A forma é {c}.", "A forma que aparece na imagem é {c}."),
        "shape": ("É {s}.", "A imagem contém apenas {s}."),
        "color_yn": ("{lead}, a forma na imagem é {c}.",),
        "shape_yn": ("{lead}, a imagem contém {s}.",),
    },
    "nl": {
        "yes": "Ja",
        "no": "Nee",
        "colors": ("rood", "groen", "blauw", "zwart", "grijs", "turquoise", "bruin", "geel"),
        "shapes": ("een cirkel", "een rechthoek", "een driehoek"),
        "color": ("De vorm is {c}.", "De vorm die je in de afbeelding ziet is {c}."),
        "shape": ("Het is {s}.", "De afbeelding bevat alleen {s}."),
        "color_yn": ("{lead}, de vorm in de afbeelding is {c}.",),
        "shape_yn": ("{lead}, de afbeelding bevat {s}.",),
    },
}
VARIANT_LANGUAGES = {"A": ("fr", "de", "es"), "B": ("it", "pt", "nl")}


@dataclasses.dataclass(frozen=True)
class Templates:
    """Question phrasings and answer templates of one variant.

    Shape answers take ``{color}``, ``{shape}``, ``{asked}`` (what a yes/no question asks about), ``{lead}``
    (Yes/No); ``*_long`` answers have at least nine words (the bases of truncated answers). Photo answers take
    ``{caption}``, ``{caption_lc}``, ``{short}``, ``{subject}``, ``{Subject}``, ``{kind}``, ``{colorword}``.
    """

    questions: dict  # shape question type -> phrasings, or None to keep easy-VQA's own question
    color: tuple
    shape: tuple
    color_yn_present: tuple
    color_yn_absent: tuple
    shape_yn_present: tuple
    shape_yn_absent: tuple
    color_long: tuple
    shape_long: tuple
    yn_long: tuple
    photo_questions: dict
    photo_answers: dict
    trivial_open: tuple
    trivial_yn: tuple
    gibberish: tuple


TEMPLATES = {
    "A": Templates(
        questions={},
        color=(
            "The shape is {color}.",
            "It is {color}.",
            "The {shape} in the image is {color}.",
            "The image shows a {color} {shape}, so the color is {color}.",
        ),
        shape=(
            "It is a {shape}.",
            "The shape is a {shape}.",
            "The image contains a single {color} {shape}.",
            "There is a {shape} in the image, drawn in {color}.",
        ),
        color_yn_present=("{lead}, the shape is {asked}.", "{lead}, the shape in the image is {asked}."),
        color_yn_absent=(
            "{lead}, the shape is {color}, not {asked}.",
            "{lead}. The only shape in the image is {color}.",
        ),
        shape_yn_present=("{lead}, the shape is a {asked}.", "{lead}, the image contains a {color} {asked}."),
        shape_yn_absent=(
            "{lead}, the shape is a {shape}, not a {asked}.",
            "{lead}. The only shape in the image is a {color} {shape}.",
        ),
        color_long=("There is exactly one shape in the image, a {shape}, and its color is {color}.",),
        shape_long=("There is exactly one shape in the image, and it is a {color} {shape} of medium size.",),
        yn_long=("{lead}, because the only shape in this image is a {color} {shape} and nothing else is drawn.",),
        photo_questions={
            "describe": ("Describe this image in detail.", "What is shown in this picture?"),
            "caption": ("Write a short caption for this image.",),
            "subject": ("What is the main subject of this picture?",),
            "color": ("Is this a color image or a grayscale one?",),
            "kind": ("What kind of image is this?",),
        },
        photo_answers={
            "describe": ("{caption}", "{caption} It is a {colorword} {kind}."),
            "caption": ("{short}", "A {colorword} {kind} of {subject}."),
            "subject": ("The main subject is {subject}.", "It shows {subject}."),
            "color": ("It is a {colorword} image.", "This is a {colorword} {kind}."),
            "kind": ("It is a {kind} of {subject}.", "This is a {kind}; it shows {subject}."),
        },
        trivial_open=("ok", "Yes.", "yes", "N/A", "I don't know.", "Sure.", "...", "{question}"),
        trivial_yn=("ok", "Sure.", "N/A", "...", "{question}", "Good question."),
        gibberish=("letters", "mash", "shuffle", "mojibake"),
    ),
    "B": Templates(
        questions={
            "color": ("Which color is the shape?", "What colour does the {shape} have?", "Tell me the shape's color."),
            "shape": (
                "Which shape can you see in this picture?",
                "Name the shape shown here.",
                "What kind of shape is the {color} object?",
            ),
            "color_yn": ("Can you see a {asked} shape in this picture?", "Does this picture show a {asked} shape?"),
            "color_yn_neg": ("Is it true that this picture has no {asked} shape?",),
            "shape_yn": ("Can you spot a {asked} here?", "Does this picture show a {asked}?"),
            "shape_yn_neg": ("Is it true that this picture has no {asked}?",),
        },
        color=(
            "Its color is {color}.",
            "That shape is colored {color}.",
            "It's {color}.",
            "I can see a {color} {shape}; its color is {color}.",
        ),
        shape=(
            "It's a {shape}.",
            "That is a {shape}.",
            "The picture shows one {shape}, colored {color}.",
            "You can see a {shape} filled with {color}.",
        ),
        color_yn_present=("{lead}: there is a {asked} {shape} in it.", "{lead}. The picture has a {asked} shape."),
        color_yn_absent=("{lead}: the shape here is {color}.", "{lead}. The picture only has a {color} {shape}."),
        shape_yn_present=("{lead}: there is a {asked}, colored {color}.", "{lead}. The picture has a {asked}."),
        shape_yn_absent=("{lead}: the picture shows a {shape} instead.", "{lead}. The only shape here is a {shape}."),
        color_long=("Looking at the picture, I can see one {shape}, and it is filled with the color {color}.",),
        shape_long=("Looking at the picture, the one shape I can see is a {shape}, and it is filled with {color}.",),
        yn_long=("{lead}: looking at the picture, the one shape it contains is a {shape} colored {color}.",),
        photo_questions={
            "describe": ("Give a detailed description of the picture.", "Can you explain what this image shows?"),
            "caption": ("Suggest a one-line caption for this picture.",),
            "subject": ("What does this picture mainly show?",),
            "color": ("Does this picture have color, or is it black and white?",),
            "kind": ("What type of picture is this?",),
        },
        photo_answers={
            "describe": ("The picture shows {caption_lc}", "{caption} Overall, it is a {colorword} {kind}."),
            "caption": ("{Subject}, shown in a {colorword} {kind}.", "{Subject} in a {colorword} {kind}."),
            "subject": ("It mainly shows {subject}.", "The picture is mostly about {subject}."),
            "color": ("The picture is {colorword}.", "It is a {colorword} {kind}, judging by its colors."),
            "kind": ("This picture is a {kind} of {subject}.", "A {kind}: it shows {subject}."),
        },
        trivial_open=("okay", "Yes!", "no idea", "-", "See image.", "Thanks.", "{question}", "Yes"),
        trivial_yn=("okay", "See image.", "Thanks.", "-", "{question}", "Hmm."),
        gibberish=("letters", "mash", "shuffle", "mojibake", "noise"),
    ),
}
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl;", "zxcvbnm,./", "1234567890")


def defect_counts(n: int) -> dict[str, int]:
    """Rows of each defect kind for ``n`` rows: :data:`DEFECT_SHARES` times ``n`` by largest remainder."""
    exact = {kind: n * share for kind, share in DEFECT_SHARES.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    target = round(n * sum(DEFECT_SHARES.values()))
    for kind in sorted(exact, key=lambda k: (counts[k] - exact[k], KINDS.index(k)))[: target - sum(counts.values())]:
        counts[kind] += 1
    return counts


# ------------------------------------------------------------------------------------------------ sources


@functools.lru_cache(maxsize=1)  # read once per process; callers never modify the result
def _easy_vqa_facts():
    """``{image_id: (color, shape)}`` and ``{image_id: [question, ...]}`` from easy-VQA's training pairs."""
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    color, shape, by_image = {}, {}, {}
    for q, a, i in zip(questions, answers, image_ids):
        if a in COLORS:
            color[i] = a
        elif a in SHAPES:
            shape[i] = a
        by_image.setdefault(i, []).append(q)
    facts = {i: (color[i], shape[i]) for i in sorted(paths) if i in color and i in shape}
    return facts, by_image, paths


@functools.lru_cache(maxsize=1)  # read once per process; callers never modify the result
def _photo_arrays():
    """``{name: uint8 array}`` for every photo in :data:`PHOTOS` (all load offline)."""
    import numpy as np
    from skimage import data

    arrays = {}
    for name in PHOTOS:
        if name.startswith("sklearn:"):
            from sklearn.datasets import load_sample_image

            array = load_sample_image(name.split(":", 1)[1])
        else:
            # binary_blobs is drawn at random: fix its seed so that the same seed writes the same files.
            array = data.binary_blobs(rng=0) if name == "binary_blobs" else getattr(data, name)()
            if isinstance(array, tuple):  # stereo pair: the left image
                array = array[0]
        array = np.asarray(array)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            array = np.clip(255 * (array - array.min()) / max(float(np.ptp(array)), 1e-9), 0, 255).astype(np.uint8)
        arrays[name] = array
    return arrays


def _is_color(array) -> bool:
    import numpy as np

    if array.ndim < 3:
        return False
    rgb = array[..., :3].astype(np.int16)
    return float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean()) > 3.0


def _photo_image(array):
    from PIL import Image

    img = Image.fromarray(array)
    if img.mode == "RGBA":
        # Flatten onto white: the benchmark's rows are plain JPEG photos.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        img = background
    img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
    img.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
    return img


def _encode(img, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpg":
        img.save(buffer, format="JPEG", quality=quality)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ rows


@dataclasses.dataclass
class Row:
    """One conversation before it is written: image bytes, question, answer and what the label file says."""

    source: str  # "easy-vqa" or "photo"
    image: bytes
    ext: str
    question: str
    answer: str
    facts: dict
    defect: str | None = None
    group: str | None = None
    detail: str | None = None


def _parse_easy_vqa(question: str) -> dict:
    """Question type and what it asks about: ``{"qtype", "asked", "negated"}``."""
    negated = bool(re.search(r"\bnot\b|\bno\b", question))
    color = next((c for c in COLORS if re.search(rf"\b{c}\b", question)), None)
    shape = next((s for s in SHAPES if re.search(rf"\b{s}\b", question)), None)
    if question.startswith("what"):
        if "color" in question:
            return {"qtype": "color", "asked": None, "negated": False}
        return {"qtype": "shape", "asked": None, "negated": False}
    if color is not None:
        return {"qtype": "color_yn", "asked": color, "negated": negated}
    return {"qtype": "shape_yn", "asked": shape, "negated": negated}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class Generator:
    """Builds the rows of one variant; every random choice comes from ``self.rng``."""

    def __init__(self, variant: str, n: int, seed: int):
        self.variant = variant
        self.t = TEMPLATES[variant]
        self.n = n
        self.rng = random.Random(seed)
        self.facts, self.questions, self.paths = _easy_vqa_facts()
        self.free_images = self.rng.sample(sorted(self.facts), len(self.facts))
        self.photos = {}
        for name, array in _photo_arrays().items():
            img = _photo_image(array)
            subject, kind, caption, short = PHOTOS[name]
            self.photos[name] = {
                "img": img,
                "bytes": _encode(img, "jpg"),
                "subject": subject,
                "Subject": _cap(subject),
                "kind": kind,
                "caption": caption,
                "caption_lc": caption[:1].lower() + caption[1:],
                "short": short,
                "colorword": "color" if _is_color(array) else "grayscale",
            }

    # -- clean rows

    def shape_row(self, image_id: int | None = None, qtype: str | None = None) -> Row:
        """A clean easy-VQA row on an unused image (or ``image_id``), optionally of one question type."""
        if image_id is None:
            image_id = self.free_images.pop()
        color, shape = self.facts[image_id]
        candidates = sorted(set(self.questions[image_id]))
        if qtype is not None:
            candidates = [q for q in candidates if _parse_easy_vqa(q)["qtype"] == qtype] or candidates
        raw = self.rng.choice(candidates)
        parsed = _parse_easy_vqa(raw)
        facts = {"color": color, "shape": shape, **parsed, "image_id": image_id}
        present = parsed["asked"] in (color, shape) if parsed["asked"] else None
        facts["present"] = present
        facts["yes"] = None if present is None else present != parsed["negated"]
        question = self._shape_question(raw, facts)
        with open(self.paths[image_id], "rb") as handle:
            image = handle.read()
        return Row("easy-vqa", image, "png", question, self.shape_answer(facts), facts)

    def _shape_question(self, raw: str, facts: dict) -> str:
        phrasings = self.t.questions
        if not phrasings:
            return _cap(raw)
        key = facts["qtype"] + ("_neg" if facts["negated"] else "")
        template = self.rng.choice(phrasings[key])
        return template.format(color=facts["color"], shape=facts["shape"], asked=facts["asked"])

    def shape_answer(self, facts: dict, *, long: bool = False, avoid: frozenset = frozenset()) -> str:
        qtype = facts["qtype"]
        if long:
            options = {"color": self.t.color_long, "shape": self.t.shape_long}.get(qtype, self.t.yn_long)
        elif qtype in ("color", "shape"):
            options = getattr(self.t, qtype)
        else:
            suffix = "present" if facts["present"] else "absent"
            options = getattr(self.t, f"{qtype}_{suffix}")
        values = {
            "color": facts["color"],
            "shape": facts["shape"],
            "asked": facts["asked"],
            "lead": "Yes" if facts["yes"] else "No",
        }
        answers = [o.format(**values) for o in options]
        answers = [a for a in answers if a not in avoid] or answers
        return self.rng.choice(answers)

    def photo_row(self, name: str, qtype: str) -> Row:
        photo = self.photos[name]
        question = self.rng.choice(self.t.photo_questions[qtype])
        facts = {"photo": name, "qtype": qtype}
        return Row("photo", photo["bytes"], "jpg", question, self.photo_answer(name, qtype), facts)

    def photo_answer(self, name: str, qtype: str, *, avoid: frozenset = frozenset()) -> str:
        photo = self.photos[name]
        answers = [a.format(**photo) for a in self.t.photo_answers[qtype]]
        answers = [a for a in answers if a not in avoid] or answers
        return self.rng.choice(answers)

    def answer_again(self, row: Row, used: frozenset) -> str:
        """Another correct answer to ``row``'s question, not one of ``used`` where the templates allow it."""
        if row.source == "photo":
            return self.photo_answer(row.facts["photo"], row.facts["qtype"], avoid=used)
        return self.shape_answer(row.facts, avoid=used)

    def base_row(self, *, photo_qtypes: tuple | None = None, shape_qtype: str | None = None) -> Row:
        """A fresh correct row to plant a defect in: a photo with probability :data:`PHOTO_SHARE`."""
        if self.rng.random() < PHOTO_SHARE:
            name = self.rng.choice(sorted(self.photos))
            return self.photo_row(name, self.rng.choice(photo_qtypes or sorted(self.t.photo_questions)))
        return self.shape_row(qtype=shape_qtype)

    def clean_rows(self, n_clean: int) -> list[Row]:
        n_photo = min(round(PHOTO_SHARE * n_clean), 3 * len(self.photos))
        slots = []
        for name in sorted(self.photos):
            # Up to three different questions per photo: rows that share an image are not duplicates.
            slots += [(name, q) for q in self.rng.sample(sorted(self.t.photo_questions), 3)]
        rows = [self.photo_row(name, q) for name, q in self.rng.sample(slots, n_photo)]
        rows += [self.shape_row() for _ in range(n_clean - n_photo)]
        return rows

    # -- defects

    def empty(self, row: Row) -> Row:
        roll = self.rng.random()
        if roll < 0.2:
            row.answer, row.detail = self.rng.choice(("", " ", "\n")), "empty"
            return row
        is_open = row.source == "photo" or row.facts["qtype"] in ("color", "shape")
        answer = self.rng.choice(self.t.trivial_open if is_open else self.t.trivial_yn)
        row.detail = "question_repeated" if answer == "{question}" else "trivial"
        row.answer = answer.format(question=row.question)
        return row

    def truncated(self, row: Row) -> Row:
        if row.source == "photo":
            full = row.answer
        else:
            full = self.shape_answer(row.facts, long=True)
        lo, hi = int(0.35 * len(full)), int(0.75 * len(full))
        if self.rng.random() < 0.5:
            cuts = [i for i in range(lo, hi) if full[i - 1].isalpha() and full[i].isalpha()]
            row.detail = "mid_word"
        else:
            cuts = [i for i in range(lo, hi) if full[i] == " " and full[i - 1].isalpha()]
            row.detail = "mid_sentence"
        row.answer = full[: self.rng.choice(cuts)]
        return row

    def gibberish(self, row: Row) -> Row:
        how = self.rng.choice(self.t.gibberish)
        words = row.answer.split()
        if how == "letters":
            alphabet = "abcdefghijklmnopqrstuvwxyz" + ("0123456789" if self.variant == "B" else "")
            n_words = self.rng.randint(4, 14)
            text = " ".join(
                "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(2, 9))) for _ in range(n_words)
            )
        elif how == "mash":
            parts = []
            for _ in range(self.rng.randint(3, 8)):
                keys = self.rng.choice(KEYBOARD_ROWS)
                start = self.rng.randrange(len(keys) - 3)
                parts.append(keys[start : start + self.rng.randint(3, len(keys) - start)])
            text = " ".join(parts) if self.rng.random() < 0.5 else "".join(parts)
        elif how == "shuffle":
            shuffled = list(words)
            while len(words) > 2 and shuffled == words:
                self.rng.shuffle(shuffled)
            text = " ".join(w.strip(".,;:") for w in shuffled).lower()
            text = _cap(text) + "."
        elif how == "mojibake":
            # Typographic punctuation written as UTF-8 and read back as cp1252, twice: "’" -> "Ã¢â‚¬â„¢".
            fancy = "\u201c" + row.answer.replace("'", "\u2019").replace(", ", " \u2014 ").rstrip(".") + "\u201d\u2026"
            fancy = re.sub(r"\b([A-Za-z]+)e\b", lambda m: m.group(1) + "\u00e9", fancy)
            for _ in range(2):
                fancy = fancy.encode("utf-8").decode("cp1252", errors="replace")
            text = fancy
        else:  # noise: 40% of the letters replaced by random printable characters
            pool = "abcdefghijklmnopqrstuvwxyz#%&*@!?$^~<>"
            text = "".join(self.rng.choice(pool) if c.isalpha() and self.rng.random() < 0.4 else c for c in row.answer)
        row.answer, row.detail = text, how
        return row

    def unrelated(self, row: Row, donors: list[Row]) -> Row:
        other = [d for d in donors if d.source != row.source]
        row.answer = self.rng.choice(other).answer
        row.detail = f"answer_from_{'photo' if row.source == 'easy-vqa' else 'shape'}_row"
        return row

    def wrong_language(self, row: Row) -> Row:
        lang = self.rng.choice(VARIANT_LANGUAGES[self.variant])
        row.detail = lang
        if row.source == "photo":
            row.answer = TRANSLATED_CAPTIONS[lang][row.facts["photo"]]
            return row
        spec, facts = LANGUAGES[lang], row.facts
        values = {
            "c": spec["colors"][COLORS.index(facts["color"])],
            "s": spec["shapes"][SHAPES.index(facts["shape"])],
            "lead": spec["yes"] if facts["yes"] else spec["no"],
        }
        row.answer = self.rng.choice(spec[facts["qtype"]]).format(**values)
        return row

    def image_mismatch(self, row: Row) -> Row:
        """Keep the image, answer the question about another image (a different colour and shape, or photo)."""
        if row.source == "photo":
            name = row.facts["photo"]
            others = [p for p in sorted(self.photos) if p != name]
            qtype = row.facts["qtype"]
            if qtype == "color":
                # A colour question is only wrong about another photo whose colour differs.
                others = [p for p in others if self.photos[p]["colorword"] != self.photos[name]["colorword"]]
            other = self.rng.choice(others)
            row.answer, row.detail = self.photo_answer(other, qtype), f"answer_about_{other}"
            return row
        color, shape = row.facts["color"], row.facts["shape"]
        while True:
            other = self.free_images.pop()
            other_color, other_shape = self.facts[other]
            if other_color != color and other_shape != shape:
                break
        facts = dict(row.facts, color=other_color, shape=other_shape)
        if facts["asked"] is not None:
            facts["present"] = facts["asked"] in (other_color, other_shape)
            facts["yes"] = facts["present"] != facts["negated"]
        row.answer, row.detail = self.shape_answer(facts), f"answer_about_image_{other}"
        return row

    def near_copy(self, row: Row, used: frozenset) -> Row:
        from PIL import Image, ImageEnhance

        img = Image.open(io.BytesIO(row.image))
        img.load()
        img = img.convert("RGB")
        steps = self.rng.sample(("jpeg", "crop", "resize", "brightness"), self.rng.randint(1, 2))
        quality = 90
        for step in steps:
            w, h = img.size
            if step == "crop":
                keep = self.rng.uniform(0.85, 0.95)
                cw, ch = round(w * keep), round(h * keep)
                x, y = self.rng.randint(0, w - cw), self.rng.randint(0, h - ch)
                img = img.crop((x, y, x + cw, y + ch))
            elif step == "resize":
                scale = self.rng.choice((self.rng.uniform(0.6, 0.85), self.rng.uniform(1.2, 1.6)))
                img = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BICUBIC)
            elif step == "brightness":
                img = ImageEnhance.Brightness(img).enhance(self.rng.choice((0.8, 0.85, 1.15, 1.2)))
            else:
                quality = self.rng.randint(30, 70)
        ext = "jpg" if "jpeg" in steps or row.ext == "jpg" else "png"
        copy = dataclasses.replace(row, image=_encode(img, ext, quality), ext=ext, defect="near_duplicate")
        copy.answer = self.answer_again(row, used)
        copy.detail = "+".join(steps)
        return copy

    def build(self) -> list[Row]:
        counts = defect_counts(self.n)
        clean = self.clean_rows(self.n - sum(counts.values()))
        rows = list(clean)
        # Duplicate groups: the original stays clean; copies fill the kind's count, 1-3 copies per group.
        originals = self.rng.sample(range(len(clean)), len(clean))
        for kind, prefix in (("exact_duplicate", "exact"), ("near_duplicate", "near")):
            left, g = counts[kind], 0
            while left:
                original = clean[originals.pop()]
                original.group = f"{prefix}-{g}"
                used = {original.answer}
                for _ in range(min(left, self.rng.randint(1, 3))):
                    if kind == "exact_duplicate":
                        copy = dataclasses.replace(original, defect=kind, detail="copy")
                    else:
                        copy = self.near_copy(original, frozenset(used))
                        used.add(copy.answer)
                    rows.append(copy)
                    left -= 1
                g += 1
        for kind in ("empty", "truncated", "gibberish", "unrelated", "wrong_language", "image_mismatch"):
            for _ in range(counts[kind]):
                if kind == "truncated":
                    base = self.base_row(photo_qtypes=("describe",))
                elif kind == "wrong_language":
                    base = self.base_row(photo_qtypes=("describe", "caption"))
                    if base.source == "photo" and base.facts["photo"] not in TRANSLATED_CAPTIONS["fr"]:
                        base = self.photo_row(self.rng.choice(sorted(TRANSLATED_CAPTIONS["fr"])), base.facts["qtype"])
                elif kind == "image_mismatch":
                    base = self.base_row(shape_qtype=self.rng.choice(("color", "shape")))
                else:
                    base = self.base_row()
                base.defect = kind
                if kind == "unrelated":
                    rows.append(self.unrelated(base, clean))
                else:
                    rows.append(getattr(self, kind)(base))
        self.rng.shuffle(rows)
        return rows


def _topic(row: Row) -> str:
    """What a clean row teaches, for coverage: the image's content and the kind of question (``"photo:cat/describe"``,
    ``"easy-vqa:circle-red/color"``). Defect rows carry the topic of the row they were made from."""
    facts = row.facts
    content = facts["photo"] if row.source == "photo" else f"{facts['shape']}-{facts['color']}"
    return f"{row.source}:{content}/{facts['qtype']}"


def generate(out: str, variant: str = "A", n: int = 600, seed: int | None = None) -> dict:
    """Write ``out/data.json``, ``out/images/`` and ``out/labels.jsonl``; return a summary.

    Args:
        out: output folder (created; files of an earlier run are overwritten).
        variant: ``"A"`` or ``"B"`` (other templates, languages and default seed).
        n: number of rows, at least 40 (so that every defect kind is present).
        seed: random seed; default 0 for A and 1 for B.

    Returns:
        ``{"data", "labels", "n_rows", "counts": {kind or "clean": rows}, "groups": {"exact", "near"}, "seconds"}``.
    """
    from selector.fileio import atomic_write_bytes, dumps_json

    def write(path: str, data: bytes) -> None:
        # Unchanged files keep their modification time, so a re-run of the benchmark on the same variant, n and
        # seed resumes the scored run instead of scoring again (the loader's cache key stats the files).
        try:
            with open(path, "rb") as handle:
                if handle.read() == data:
                    return
        except OSError:
            pass
        atomic_write_bytes(path, data)

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if n < 40:
        raise ValueError(f"n must be at least 40 so that every defect kind is present, got {n}")
    start = time.perf_counter()
    seed = DEFAULT_SEEDS[variant] if seed is None else seed
    rows = Generator(variant, n, seed).build()
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    records, labels = [], []
    for index, row in enumerate(rows):
        row_id = f"{variant.lower()}-{index:05d}"
        file = f"images/{row_id}.{row.ext}"
        write(os.path.join(out, file), row.image)
        records.append(
            {
                "id": row_id,
                "image": file,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{row.question}"},
                    {"from": "gpt", "value": row.answer},
                ],
            }
        )
        labels.append(
            {
                "id": row_id,
                "defect": row.defect,
                "group": row.group,
                "detail": row.detail,
                "source": row.source,
                "topic": _topic(row),
            }
        )
    written = {os.path.basename(r["image"]) for r in records}
    stale = re.compile(rf"{variant.lower()}-\d{{5}}\.(png|jpg)")
    for name in os.listdir(os.path.join(out, "images")):
        # An earlier run with more rows into the same folder left images no row refers to any more.
        if stale.fullmatch(name) and name not in written:
            os.remove(os.path.join(out, "images", name))
    data_path, labels_path = os.path.join(out, "data.json"), os.path.join(out, "labels.jsonl")
    write(data_path, (dumps_json(records) + "\n").encode())
    write(labels_path, "".join(dumps_json(label, indent=None) + "\n" for label in labels).encode())
    counts = Counter(label["defect"] or "clean" for label in labels)
    groups = Counter(label["group"].split("-")[0] for label in labels if label["group"])
    return {
        "data": data_path,
        "labels": labels_path,
        "n_rows": len(records),
        "counts": {kind: counts.get(kind, 0) for kind in ("clean", *KINDS)},
        "groups": {
            "exact": len({label["group"] for label in labels if (label["group"] or "").startswith("exact-")}),
            "near": len({label["group"] for label in labels if (label["group"] or "").startswith("near-")}),
            "rows_in_groups": dict(groups),
        },
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variant", choices=VARIANTS, default="A")
    parser.add_argument("--n", type=int, default=600, help="rows (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="default: 0 for A, 1 for B")
    parser.add_argument("--out", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.variant, args.n, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
