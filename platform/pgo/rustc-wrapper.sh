#!/bin/sh
# Cargo's rustc wrapper (.cargo/config.toml, build.rustc-wrapper): hands a
# release build's crates the profile in agentnet.profdata beside it
# (profile-guided optimization: LLVM lays out and inlines by what running
# daemons executed). scripts/symbol-order.sh writes that profile.
#
# A crate gets it when it is compiled with opt-level 3 and without debug
# assertions (cargo's release and bench profiles, not dev's optimized
# dependencies), when it is not being instrumented or fuzzed, and unless
# AGENTNET_PGO=0. Functions that changed since the profile was taken are
# compiled as without it (LLVM's mismatch warning is switched off), so a
# stale profile costs speed, never a build.
# Usage (by cargo): rustc-wrapper.sh RUSTC ARGS...
profile="$(cd "$(dirname "$0")" && pwd)/agentnet.profdata"
use=0
case " $* " in *" opt-level=3 "*) use=1 ;; esac
case " $* " in
*" debug-assertions=on "* | *profile-generate* | *profile-use* | *sancov* | *instrument-coverage*) use=0 ;;
esac
[ "${AGENTNET_PGO:-1}" = 0 ] && use=0
[ -f "$profile" ] || use=0
if [ "$use" = 1 ]; then
    exec "$@" "-Cprofile-use=$profile" -Cllvm-args=-no-pgo-warn-mismatch
fi
exec "$@"
