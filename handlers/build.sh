#!/usr/bin/env bash
# Build every Rust handler and test fixture for wasm32-wasip2, copy the components to
# handlers/dist/ under stable names (the host's tests and `make run` load them from there),
# then the Python ones (handlers/build-python.sh) and the JavaScript ones (handlers/build-js.sh).
#
# Usage: handlers/build.sh        (from anywhere; honours CARGO_BUILD_JOBS and CARGO_TARGET_DIR)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2

sysroot="$(rustc --print sysroot)"
if [[ ! -d "$sysroot/lib/rustlib/$target" ]]; then
    echo "error: the Rust target $target is not installed (run \`make setup\`, or \`rustup target add $target\`)" >&2
    exit 1
fi

cargo build --release --target "$target" --workspace --manifest-path "$here/Cargo.toml"

out="${CARGO_TARGET_DIR:-$here/target}/$target/release"
dist="$here/dist"
mkdir -p "$dist"

# <file cargo writes> <name in dist/>: cargo writes library crates with `_` for `-`.
components=(
    "notification.wasm notification.wasm"
    "recurring.wasm recurring.wasm"
    "audit.wasm audit.wasm"
    "live_updates.wasm live-updates.wasm"
    "fixture.wasm fixture.wasm"
    "fixture_publisher.wasm fixture-publisher.wasm"
    "fixture_sql.wasm fixture-sql.wasm"
    "other-world.wasm other-world.wasm"
    "hostile.wasm hostile.wasm"
    "hostile_init.wasm hostile-init.wasm"
)
for pair in "${components[@]}"; do
    read -r built name <<<"$pair"
    if [[ ! -f "$out/$built" ]]; then
        echo "error: cargo did not produce $out/$built" >&2
        exit 1
    fi
    cp "$out/$built" "$dist/$name.tmp"
    mv "$dist/$name.tmp" "$dist/$name"
    printf '%8d  %s\n' "$(wc -c <"$dist/$name")" "dist/$name"
done

# The second version of the publisher fixture, for the hot-swap tests.
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml" -p fixture-publisher --features v2
cp "$out/fixture_publisher.wasm" "$dist/fixture-publisher-v2.wasm.tmp"
mv "$dist/fixture-publisher-v2.wasm.tmp" "$dist/fixture-publisher-v2.wasm"
printf '%8d  %s\n' "$(wc -c <"$dist/fixture-publisher-v2.wasm")" "dist/fixture-publisher-v2.wasm"

# The fixture with its `post` action (it imports `http` too), for the trace tests.
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml" -p fixture --features http
cp "$out/fixture.wasm" "$dist/fixture-http.wasm.tmp"
mv "$dist/fixture-http.wasm.tmp" "$dist/fixture-http.wasm"
printf '%8d  %s\n' "$(wc -c <"$dist/fixture-http.wasm")" "dist/fixture-http.wasm"

# The SQL fixture with its `post` step (it imports `http` too), for the tests that count runs.
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml" -p fixture-sql --features http
cp "$out/fixture_sql.wasm" "$dist/fixture-sql-http.wasm.tmp"
mv "$dist/fixture-sql-http.wasm.tmp" "$dist/fixture-sql-http.wasm"
printf '%8d  %s\n' "$(wc -c <"$dist/fixture-sql-http.wasm")" "dist/fixture-sql-http.wasm"

# The Python handlers and fixtures (py-*.wasm): componentize-py, installed from PyPI into
# target/python/ on the first run; skipped when nothing changed.
"$here/build-python.sh"

# The JavaScript handlers and fixtures (js-*.wasm): componentize-js, installed from npm into
# guest-sdk-js/node_modules on the first run; skipped when nothing changed.
"$here/build-js.sh"
