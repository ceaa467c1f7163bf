# The snp filter's Wasm module as an image, for istio-agent to pull (patch 1 of
# deploy/istio/envoyfilter.yaml). It uses the "compat" layout of the Wasm image specification that
# Istio reads: one layer holding plugin.wasm, and no base image.
#
#   scripts/build-filter.sh       # target/wasm/snp_filter.wasm (cargo, then wasm-opt -Oz)
#   docker build -f deploy/istio/wasm.Dockerfile -t registry.example.com/snp-filter:0.1.0 \
#     target/wasm
#   docker push registry.example.com/snp-filter:0.1.0
#
# The build context is the directory holding the .wasm file, not the repository root, because
# the root's .dockerignore leaves out target/. Then set
# uri: oci://registry.example.com/snp-filter:0.1.0 in envoyfilter.yaml.
FROM scratch
COPY snp_filter.wasm ./plugin.wasm
