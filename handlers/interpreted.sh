# Sourced by build-python.sh and build-js.sh: build an interpreted language's components into
# handlers/dist/, only those older than what they are made of, $jobs at a time.
#
# The caller sets `here` (handlers/), `dist`, `jobs`, `logs` (a folder for each build's
# output) and the array `components` (entries "<source under handlers/> <name in dist/>
# <capabilities: comma-separated, `none`, or `-` for those the project declares>"), and
# defines:
#   stale OUT SRC          whether component OUT is older than anything it is made of;
#   build_with SRC NAME OUT [--capability C ...]
#                          build SRC into OUT, naming the component NAME;
#   before_first_build     (optional) run once, before the first component that is rebuilt.

build_one() {
    local src="$1" name="$2" caps="$3" flags=()
    if [[ "$caps" == none ]]; then
        flags=(--capability log)
    elif [[ "$caps" != - ]]; then
        IFS=, read -ra list <<<"$caps"
        for c in "${list[@]}"; do flags+=(--capability "$c"); done
    fi
    local log="$logs/build-$name.log"
    if build_with "$here/$src" "$name" "$dist/$name.wasm" "${flags[@]}" >"$log" 2>&1; then
        printf '%8d  %s\n' "$(wc -c <"$dist/$name.wasm")" "dist/$name.wasm"
    else
        echo "error: building $src failed:" >&2
        cat "$log" >&2
        return 1
    fi
}

# Build every stale component of `components`; fails when one build failed (after all ran).
build_components() {
    local pids=() failed=0 prepared=0 entry src name caps pid
    mkdir -p "$dist" "$logs"
    for entry in "${components[@]}"; do
        read -r src name caps <<<"$entry"
        if ! stale "$dist/$name.wasm" "$here/$src"; then
            printf '%8d  %s (up to date)\n' "$(wc -c <"$dist/$name.wasm")" "dist/$name.wasm"
            continue
        fi
        if (( ! prepared )) && declare -F before_first_build >/dev/null; then
            before_first_build
        fi
        prepared=1
        build_one "$src" "$name" "$caps" &
        pids+=("$!")
        if (( ${#pids[@]} >= jobs )); then
            wait "${pids[0]}" || failed=1
            pids=("${pids[@]:1}")
        fi
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    return "$failed"
}
