#!/usr/bin/env bash
# Builds the Java test programs (real Dubbo 3.3.5 and nacos-client 2.5.1 from Maven
# Central) that shim/tests/nacos_dubbo.rs runs, and writes their classpath to
# target/tools/dubbo-nacos.classpath at the repository root.
#
# The build is cached by a hash of this script, the pom and the sources under
# ${XDG_CACHE_HOME:-~/.cache}/snp/dubbo-nacos/<hash>/, so a fresh clone (CI) reuses it;
# ~/.m2 caches the downloaded jars.
#
#   build.sh          build if needed, write the classpath file
#   build.sh golden   also regenerate golden/nacos-client-2.5.1.json (the client's wire JSON)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

log() { printf '\033[1;34m[dubbo-nacos]\033[0m %s\n' "$*" >&2; }

hash="$( (sha256sum build.sh pom.xml; find src -type f | LC_ALL=C sort | xargs sha256sum) \
  | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/snp/dubbo-nacos/$hash"
if [ ! -s "$cache/classpath" ]; then
  log "building the Dubbo/Nacos test programs with Maven (cache $cache)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mvn -B -q -Dmaven.repo.local="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}" \
    compile dependency:build-classpath -Dmdep.outputFile="$work/deps.txt" >&2
  mkdir -p "$cache.tmp"
  rm -rf "$cache.tmp/classes"
  cp -a target/classes "$cache.tmp/classes"
  printf '%s:%s\n' "$cache/classes" "$(cat "$work/deps.txt")" > "$cache.tmp/classpath"
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
fi
mkdir -p "$root/target/tools"
cp "$cache/classpath" "$root/target/tools/dubbo-nacos.classpath"

if [ "${1:-}" = golden ]; then
  log "regenerating golden/nacos-client-2.5.1.json"
  mkdir -p golden
  java -cp "$(cat "$cache/classpath")" snp.it.Golden golden/nacos-client-2.5.1.json
fi
