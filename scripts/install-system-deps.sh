#!/usr/bin/env bash
# Installs the Debian tools the tests and the demo use, only when one is missing:
# dcmtk (storescu/echoscu/storescp), Orthanc with its DICOMweb and Python plugins (the research
# archive and a PACS to pull from), dicom3tools (dciodvfy judges our output), Prometheus (promtool
# and a real scraper), iproute2 (network namespaces for servers that cannot bind to loopback),
# RabbitMQ (the broker), Chromium and its driver (browser tests), openssl (test certificates),
# docker-compose (validates deploy/compose.yaml against Docker's schema; no engine needed).
set -euo pipefail
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check storescu dcmtk
check Orthanc orthanc
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need+=(orthanc-python)
check dciodvfy dicom3tools
check promtool prometheus
check ip iproute2
check rabbitmq-server rabbitmq-server
check chromium chromium
check chromedriver chromium-driver
check openssl openssl
check docker-compose docker-compose
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "error: these Debian packages are missing and this user cannot install them: ${need[*]}" >&2
    echo "       ask an administrator to run: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
