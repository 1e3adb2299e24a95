#!/usr/bin/env python3
"""Draws a captured terminal pane (tmux `capture-pane -e -p`) as a PNG.

Usage: render_pane.py PANE.txt OUT.png

The pane's text and its SGR escape sequences (bold, dim, underline, reverse, the 16 named
colours, 256 colours and RGB) are drawn cell by cell in DejaVu Sans Mono on a dark palette, so
the README shows `top` as a terminal shows it. Run it through `cargo xtask top-png`.
"""
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
FG, BG = (220, 220, 214), (30, 31, 36)
# The 16 named colours of a dark terminal theme: what "the terminal's own colours" look like.
NAMED = [
    (40, 42, 46), (224, 108, 117), (152, 195, 121), (229, 192, 123),
    (97, 175, 239), (198, 120, 221), (86, 182, 194), (220, 223, 228),
    (92, 99, 112), (240, 128, 137), (170, 215, 140), (240, 210, 140),
    (120, 190, 250), (215, 140, 235), (110, 200, 210), (255, 255, 255),
]


def xterm256(n):
    if n < 16:
        return NAMED[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


class Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = self.dim = self.underline = self.reverse = False

    def apply(self, params):
        codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 2:
                self.dim = True
            elif c == 4:
                self.underline = True
            elif c == 7:
                self.reverse = True
            elif c == 22:
                self.bold = self.dim = False
            elif c == 24:
                self.underline = False
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = NAMED[c - 30]
            elif 90 <= c <= 97:
                self.fg = NAMED[c - 90 + 8]
            elif c == 39:
                self.fg = None
            elif 40 <= c <= 47:
                self.bg = NAMED[c - 40]
            elif 100 <= c <= 107:
                self.bg = NAMED[c - 100 + 8]
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    colour, i = xterm256(codes[i + 2]), i + 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    colour, i = tuple(codes[i + 2:i + 5]), i + 4
                else:
                    colour = None
                if c == 38:
                    self.fg = colour
                else:
                    self.bg = colour
            i += 1

    def colours(self):
        fg, bg = self.fg or FG, self.bg or BG
        if self.dim:
            fg = tuple((a + b) // 2 for a, b in zip(fg, BG))
        return (bg, fg) if self.reverse else (fg, bg)


SGR = re.compile(r"\x1b\[([0-9;]*)m")


def cells(line, style):
    """The line's characters with the style each is drawn in."""
    out, pos = [], 0
    for m in SGR.finditer(line):
        out.extend((ch, style.colours(), style.bold, style.underline) for ch in line[pos:m.start()])
        style.apply(m.group(1))
        pos = m.end()
    out.extend((ch, style.colours(), style.bold, style.underline) for ch in line[pos:])
    return out


def main():
    pane, out = sys.argv[1], sys.argv[2]
    lines = open(pane, encoding="utf-8").read().rstrip("\n").split("\n")
    font, bold = ImageFont.truetype(FONT, SIZE), ImageFont.truetype(BOLD, SIZE)
    left, top, right, bottom = font.getbbox("M")
    cw, ch = int(font.getlength("M")), int(SIZE * 1.35)
    style = Style()
    rows = [cells(line, style) for line in lines]
    width = max(len(r) for r in rows)
    pad = 14
    img = Image.new("RGB", (width * cw + 2 * pad, len(rows) * ch + 2 * pad), BG)
    draw = ImageDraw.Draw(img)
    for y, row in enumerate(rows):
        for x, (char, (fg, bg), is_bold, underline) in enumerate(row):
            px, py = pad + x * cw, pad + y * ch
            if bg != BG:
                draw.rectangle([px, py, px + cw, py + ch], fill=bg)
            if char == "█":
                draw.rectangle([px, py + 2, px + cw, py + ch - 2], fill=fg)
            elif char.strip():
                draw.text((px, py + (ch - (bottom - top)) // 2 - top), char, font=bold if is_bold else font, fill=fg)
            if underline:
                draw.line([px, py + ch - 2, px + cw, py + ch - 2], fill=fg)
    img.save(out)


if __name__ == "__main__":
    main()
