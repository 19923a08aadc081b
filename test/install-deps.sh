#!/usr/bin/env bash
# Installs the Debian 12 packages needed to build and test nydus-p2p, when
# any is missing. Safe to run repeatedly; needs root (or sudo) to install.
set -euo pipefail

packages=(
  meson ninja-build pkg-config g++ clang libclang-rt-14-dev
  libfuse3-dev fuse3 libcurl4-openssl-dev libssl-dev libzstd-dev liblz4-dev
  nlohmann-json3-dev liburing-dev catch2 librust-blake3-dev libcli11-dev libtomlplusplus-dev
  libmicrohttpd-dev libarchive-dev
  python3 python3-pytest erofs-utils squashfs-tools squashfuse attr zstd util-linux
  # registry tests (test/mount/registry_harness.py). docker-registry's postinst
  # may start the packaged service on :5000 (systemd, or sysv without a denying
  # policy-rc.d); harmless, the tests run their own registries on free ports.
  docker-registry apache2-utils python3-jwt python3-cryptography iproute2 openssl curl
  # test/run_all.sh runs the mount tests on several workers
  python3-pytest-xdist
  # P2P tests: multi-daemon network namespaces, an HTTP origin, plots
  dnsmasq-base nginx-light gnuplot-nox
  # containerd and skopeo: plain OCI images through the mirror (test_p2p.py)
  containerd skopeo
  # deployment files (test_deploy.py): the Kubernetes API models to validate
  # the manifests against, systemd-analyze for the unit
  python3-kubernetes python3-yaml systemd
  # a real container from a lazy mount (test_deploy.py)
  podman runc
)
# `kubectl kustomize` builds the kustomization; Debian's kubectl is in
# kubernetes-client, unless some kubectl is installed already (another
# package's would conflict with it).
command -v kubectl >/dev/null || packages+=(kubernetes-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
