#!/usr/bin/env bash
# Development TLS certificates for the compose stack's PostgreSQL: a private CA and a server
# certificate for the names the services use (postgres, localhost). Production: put your own
# server.crt / server.key (and ca.crt) in docker/certs instead.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/certs"
mkdir -p "$dir" && cd "$dir"
if [ -f server.crt ]; then echo "docker/certs already has server.crt; delete it to renew"; exit 0; fi
openssl req -new -x509 -days 825 -nodes -newkey rsa:2048 -subj "/CN=shop-crm dev CA" \
    -keyout ca.key -out ca.crt
openssl req -new -nodes -newkey rsa:2048 -subj "/CN=postgres" -keyout server.key -out server.csr
printf 'subjectAltName=DNS:postgres,DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile san.ext -out server.crt
rm -f server.csr san.ext ca.srl
chmod 600 ca.key server.key
echo "wrote $dir/{ca.crt,server.crt,server.key} (ca.key: keep it or delete it)"
