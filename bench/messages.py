"""Realistic test messages for the benchmark, each one distinct.

- `small`: a ~3 KB HPRIM Médecin letter (synthetic patient) in the body;
- `pdf`: the same letter with a ~200 KB message total: a real PDF report
  attached (text page, padded with an incompressible image stream);
- `big`: the same letter with a ~10 MB message total (a ~7.4 MB PDF).

A message is `prefix + suffix`: the prefix (headers, HPRIM header, letter)
varies per message (recipient, exam number, Message-ID), the suffix
(the attachment, already base64-encoded and dot-stuffed) is built once.
Everything is returned in SMTP DATA form: CRLF line ends, dot-stuffed, without
the final `.` line.
"""

from __future__ import annotations

import base64
import hashlib
import random
import zlib
from dataclasses import dataclass

SENDER = "dr.martin@medical13.apicrypt.org"
RECIPIENT_DOMAIN = "medical69.apicrypt.org"
KINDS = ("small", "pdf", "big")
RECIPIENTS = 200


def _recipient_name(i: int) -> str:
    # Twelve pseudo-random letters: no two names within a few typos of each
    # other, so that `recipient.lookalike` sees distinct correspondents.
    digest = hashlib.sha256(b"bench-recipient-%d" % i).digest()
    return "dr." + "".join(chr(ord("a") + b % 26) for b in digest[:12])


_RECIPIENT_NAMES = [_recipient_name(i) for i in range(RECIPIENTS)]
TARGET_SIZES = {"small": 3_000, "pdf": 200_000, "big": 10_000_000}

_LETTER_TEXT = (
    "Cher confrère,\r\n"
    "J'ai vu en consultation le {date} votre patiente pour un bilan cardiologique\r\n"
    "demandé à la suite d'épisodes de palpitations d'effort.\r\n"
    "\r\n"
    "Antécédents : hypertension artérielle traitée depuis 2015, pas de diabète,\r\n"
    "pas de dyslipidémie connue. Pas d'antécédent familial de mort subite.\r\n"
    "Traitement habituel : ramipril 5 mg le matin.\r\n"
    "\r\n"
    "Examen clinique : pression artérielle 132/78 mmHg aux deux bras, fréquence\r\n"
    "cardiaque 72/min régulière. Auscultation cardiaque sans souffle. Pas de signe\r\n"
    "d'insuffisance cardiaque. Pouls périphériques présents et symétriques.\r\n"
    "\r\n"
    "Électrocardiogramme : rythme sinusal, PR 160 ms, QRS fins, pas de trouble de la\r\n"
    "repolarisation. Échocardiographie : ventricule gauche non dilaté, fraction\r\n"
    "d'éjection estimée à 62 %, pas de valvulopathie significative, oreillette\r\n"
    "gauche de taille normale, pressions de remplissage basses.\r\n"
    "\r\n"
    "Holter ECG de 24 heures : quelques extrasystoles supraventriculaires isolées,\r\n"
    "sans passage en fibrillation atriale, sans pause. Les symptômes rapportés sur\r\n"
    "le carnet correspondent à une tachycardie sinusale.\r\n"
    "\r\n"
    "Conclusion : palpitations bénignes sur tachycardie sinusale d'effort, sans\r\n"
    "cardiopathie sous-jacente. Je propose de poursuivre le traitement actuel et de\r\n"
    "réévaluer dans un an, ou plus tôt en cas de symptôme nouveau (malaise,\r\n"
    "douleur thoracique, essoufflement inhabituel).\r\n"
    "\r\n"
    "Biologie du 10/11/2026 : hémoglobine 13,8 g/dL, leucocytes 6,2 G/L,\r\n"
    "plaquettes 245 G/L ; sodium 139 mmol/L, potassium 4,3 mmol/L, créatinine\r\n"
    "78 µmol/L (DFG estimé 82 mL/min/1,73 m²) ; TSH 1,9 mUI/L ; cholestérol LDL\r\n"
    "1,12 g/L ; glycémie à jeun 0,94 g/L ; ferritine 85 µg/L. Pas d'anomalie\r\n"
    "pouvant expliquer les palpitations, en particulier pas de dysthyroïdie ni\r\n"
    "d'anémie, et une kaliémie normale sous inhibiteur de l'enzyme de conversion.\r\n"
    "\r\n"
    "Épreuve d'effort : 150 W atteints, fréquence maximale théorique atteinte à\r\n"
    "92 %, profil tensionnel adapté, pas de douleur, pas de modification du\r\n"
    "segment ST, pas d'arythmie ventriculaire à l'effort ni à la récupération.\r\n"
    "Les palpitations ressenties au troisième palier sont contemporaines d'une\r\n"
    "tachycardie sinusale à 148/min.\r\n"
    "\r\n"
    "Conseils donnés : hydratation, réduction de la caféine, activité physique\r\n"
    "régulière d'intensité modérée encouragée, pas de restriction pour la conduite.\r\n"
    "\r\n"
    "Je reste à votre disposition pour tout renseignement complémentaire.\r\n"
    "Bien confraternellement.\r\n"
    "\r\n"
    "Docteur Alice Martin\r\n"
    "Cardiologue\r\n"
)


def _hprim_body(n: int, rcpt_local: str) -> str:
    """HPRIM Médecin header (12 lines), the letter, the end markers."""
    return (
        "A1B2C3\r\n"
        "TESTPATIENT\r\n"
        "Camille\r\n"
        " \r\n"
        " \r\n"
        "13001 MARSEILLE\r\n"
        "12/05/1961\r\n"
        "\r\n"
        f"CR-2026-{n:07d}\r\n"
        "20/11/2026\r\n"
        ".         dr.martin\r\n"
        f".         {rcpt_local}\r\n"
        "\r\n" + _LETTER_TEXT.replace("{date}", "18/11/2026") + "****FIN****\r\n"
        "****FINFICHIER****\r\n"
    )


def build_pdf(total_size: int, seed: int = 1) -> bytes:
    """A valid one-page PDF with a text line, padded to about `total_size` bytes
    with an image XObject of random (incompressible) gray pixels."""
    text = b"BT /F1 12 Tf 72 720 Td (Compte rendu de consultation cardiologique) Tj ET\n"
    text += b"BT /F1 10 Tf 72 700 Td (Echocardiographie et Holter ECG : resultats) Tj ET\n"
    text += b"q 200 0 0 100 72 500 cm /Im1 Do Q\n"
    content = zlib.compress(text)
    width = 512
    pixels_needed = max(width, total_size - 1_200)
    height = max(1, pixels_needed // width)
    pixels = random.Random(seed).randbytes(width * height)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> /XObject << /Im1 6 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
        + content
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
        b" /BitsPerComponent 8 /Length %d >>\nstream\n"
        % (width, height, len(pixels))
        + pixels
        + b"\nendstream",
        b"<< /Title (Compte rendu) /Producer (apiguard bench) >>",
    ]
    return pdf_file(objects, b"/Info 7 0 R ")


def pdf_file(objects: list[bytes] | tuple[bytes, ...], trailer: bytes = b"") -> bytes:
    """Objects 1..n with a classic cross-reference table; object 1 is the
    catalog; `trailer` adds entries to the trailer dictionary."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    return bytes(out)


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


def dot_stuff(data: bytes) -> bytes:
    """SMTP transparency (RFC 5321 4.5.2): a line starting with '.' gets one more."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


@dataclass(frozen=True)
class MessageFactory:
    """Builds distinct messages of one kind; `suffix` is shared by all of them."""

    kind: str
    suffix: bytes
    boundary: str

    @classmethod
    def create(cls, kind: str) -> MessageFactory:
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r} (one of {', '.join(KINDS)})")
        boundary = "=_apiguard_bench_boundary_0001"
        if kind == "small":
            return cls(kind, b"", boundary)
        # base64 grows by 4/3 plus CRLF every 76 characters.
        pdf_size = int((TARGET_SIZES[kind] - 4_000) * 0.74)
        pdf = build_pdf(pdf_size)
        part = (
            f"--{boundary}\r\n"
            'Content-Type: application/pdf; name="compte-rendu.pdf"\r\n'
            'Content-Disposition: attachment; filename="compte-rendu.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n"
        ).encode("ascii")
        suffix = part + _base64_lines(pdf) + f"--{boundary}--\r\n".encode("ascii")
        return cls(kind, suffix, boundary)

    def recipient(self, n: int) -> str:
        """One of `RECIPIENTS` correspondents, in turn: a laboratory or a
        practice writes to a set of colleagues, not to a new address each time."""
        return f"{_RECIPIENT_NAMES[n % RECIPIENTS]}@{RECIPIENT_DOMAIN}"

    def prefix(self, n: int) -> bytes:
        """Headers and the letter of message number `n` (DATA form, dot-stuffed)."""
        rcpt = self.recipient(n)
        headers = (
            "Subject: Compte rendu de consultation\r\n"
            "From: Dr Alice Martin <dr.martin@medical13.apicrypt.org>\r\n"
            f"To: {rcpt}\r\n"
            f"Message-ID: <bench-{n}@medical13.apicrypt.org>\r\n"
            "Date: Wed, 18 Nov 2026 10:00:00 +0100\r\n"
            "MIME-Version: 1.0\r\n"
        )
        body = _hprim_body(n, rcpt.split("@", 1)[0])
        if not self.suffix:
            text = (
                headers + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + body
            )
        else:
            text = (
                headers
                + f'Content-Type: multipart/mixed; boundary="{self.boundary}"\r\n\r\n'
                + f"--{self.boundary}\r\n"
                + "Content-Type: text/plain; charset=utf-8\r\n"
                + "Content-Transfer-Encoding: 8bit\r\n\r\n"
                + body
            )
        return dot_stuff(text.encode("utf-8"))

    def message(self, n: int) -> bytes:
        """The whole message `n`, un-stuffed (as a mail client would write it)."""
        data = self.prefix(n) + self.suffix
        return data.replace(b"\r\n..", b"\r\n.")[1 if data.startswith(b"..") else 0 :]
