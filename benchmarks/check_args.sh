# Sourced by gpu_check.sh and vllm_client_check.sh once each has defined `die` (one line, exit 2):
# the argument checks and the output folder both scripts share.

need_whole() {  # FLAG:VALUE ...: each value a whole number >= 1
    local pair flag value
    for pair in "$@"; do
        flag=${pair%%:*}; value=${pair#*:}
        [[ $value =~ ^[0-9]+$ ]] && [ "$((10#$value))" -ge 1 ] || die "$flag: expected a whole number >= 1, got '$value'"
    done
}

need_rate() {  # RATE: a positive number, or inf
    [ "$1" = inf ] && return 0
    [[ $1 =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && [[ $1 =~ [1-9] ]] \
        || die "--request-rate: expected a positive number or inf, got '$1'"
}

ensure_out() {  # PREFIX: OUT becomes an absolute, writable folder (a new PREFIX-XXXXXX under $TMPDIR if empty)
    if [ -z "$OUT" ]; then
        OUT="$(mktemp -d "${TMPDIR:-/tmp}/$1-XXXXXX")" || die "cannot make a folder under ${TMPDIR:-/tmp}; pass --out DIR"
    fi
    mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || die "--out $OUT: cannot create or write it; name a writable folder"
    OUT="$(cd "$OUT" && pwd)"
}
