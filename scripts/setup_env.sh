#!/usr/bin/env bash
# Creates .venv at the repository root and installs xclr into it with everything it needs:
# the Debian data sets of docs/design.md, "Data and models that work offline" (WordNet, tuxpaint stamps, Fashion-MNIST),
# torch/torchvision from this machine's disk, then the project and its pinned dependencies, and the emoji
# images of three vendors and their English tags from the npm registry (`npm pack`, unpacked into
# .venv/share/xclr-emoji; no node_modules).
# Idempotent: a second call only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -d /usr/share/wordnet ] || need+=(wordnet-base)
[ -d /usr/share/tuxpaint/stamps ] || need+=(tuxpaint-stamps-default)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  as_root=""; [ "$(id -u)" = 0 ] || as_root=sudo
  export DEBIAN_FRONTEND=noninteractive
  $as_root apt-get install -y -q "${need[@]}" >/dev/null \
    || { $as_root apt-get update -q >/dev/null && $as_root apt-get install -y -q "${need[@]}" >/dev/null; }
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.xclr-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  pip install --upgrade pip
  pip install torch==2.14.1 torchvision==0.29.1   # from this machine's disk; see README
  pip install -e ".[all,test]"
  echo "$want" > "$stamp"
fi

emoji=.venv/share/xclr-emoji
if [ ! -f "$emoji/.complete" ]; then
  rm -rf "$emoji" "$emoji.tmp" && mkdir -p "$emoji.tmp"
  (cd "$emoji.tmp" && npm pack --silent emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 \
    openmoji@17.0.0 >/dev/null)
  for vendor in google twitter; do
    mkdir -p "$emoji.tmp/$vendor"
    tar xzf "$emoji.tmp/emoji-datasource-$vendor-16.0.0.tgz" -C "$emoji.tmp/$vendor" --strip-components=4 \
      "package/img/$vendor/64"
  done
  tar xzf "$emoji.tmp/emoji-datasource-google-16.0.0.tgz" -C "$emoji.tmp" --strip-components=1 package/emoji.json
  mkdir -p "$emoji.tmp/openmoji"
  tar xzf "$emoji.tmp/openmoji-17.0.0.tgz" -C "$emoji.tmp/openmoji" --strip-components=3 package/color/svg
  rm "$emoji.tmp"/*.tgz
  touch "$emoji.tmp/.complete" && mv "$emoji.tmp" "$emoji"
fi
# The emoji's English tags (npm emojibase-data), for the emoji corpus's --captions name+tags.
if [ ! -f "$emoji/emojibase-en.json" ]; then
  rm -rf "$emoji/tags.tmp" && mkdir -p "$emoji/tags.tmp"
  (cd "$emoji/tags.tmp" && npm pack --silent emojibase-data@17.0.0 >/dev/null \
    && tar xzf emojibase-data-17.0.0.tgz --strip-components=2 package/en/data.json)
  mv "$emoji/tags.tmp/data.json" "$emoji/emojibase-en.json" && rm -rf "$emoji/tags.tmp"
fi
