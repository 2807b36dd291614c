#!/bin/sh
# Makes what a cluster's members need, in DIR (default: ./pki):
#   ca.pem, ca.key           the cluster CA (keep ca.key off the nodes)
#   NAME.pem, NAME.key       one certificate per member, subjectAltName DNS:NAME,
#                            valid for TLS server and client authentication
#   connection-id.key        32 random bytes every member shares (cluster.key_file)
# Usage: make-pki.sh [DIR] [NAME...]   (names default to a b c)
set -eu
dir=${1:-pki}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- a b c
mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 3650 -subj "/CN=aquatic cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
for name in "$@"; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$name.key" -out "$name.csr" -subj "/CN=$name"
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n' "$name" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$name.pem" -days 825 -extfile "$name.ext"
    rm -f "$name.csr" "$name.ext"
done
[ -f connection-id.key ] || head -c 32 /dev/urandom > connection-id.key
echo "made $(pwd): ca.pem, $*, connection-id.key"
