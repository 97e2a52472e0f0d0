#!/bin/sh
# Creates (or updates) the two secrets the spock manifests use, in every node namespace:
#   spock-superuser   basic-auth, username postgres: the Clusters' superuserSecret; the
#                     join Job connects with it, and spock.add_node manages the other
#                     nodes with it (one password for all nodes)
#   spock-replicator  basic-auth, username spock_replicator: the LOGIN REPLICATION role
#                     the peers' subscriptions connect as (one password for all nodes)
#
#   deploy/cnpg/create-secrets.sh                      # namespaces spock-n1 spock-n2 spock-n3
#   deploy/cnpg/create-secrets.sh spock-n2             # just one
# One node per Kubernetes cluster: run it once per cluster with the same passwords,
#   export SPOCK_REPLICATOR_PASSWORD=$(head -c 18 /dev/urandom | base64)
#   export SPOCK_SUPERUSER_PASSWORD=$(head -c 18 /dev/urandom | base64)
#   KUBECTL="kubectl --context ctx-n1" deploy/cnpg/create-secrets.sh spock-n1   # and so on
# Existing secrets are overwritten; create them before the Clusters (CNPG reads them at
# bootstrap and when they change).
set -eu
KUBECTL="${KUBECTL:-kubectl}"
random() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }
REPL="${SPOCK_REPLICATOR_PASSWORD:-$(random)}"
SUPER="${SPOCK_SUPERUSER_PASSWORD:-$(random)}"
[ $# -gt 0 ] || set -- spock-n1 spock-n2 spock-n3
for ns in "$@"; do
    $KUBECTL create namespace "$ns" --dry-run=client -o yaml | $KUBECTL apply -f -
    $KUBECTL -n "$ns" create secret generic spock-superuser --type=kubernetes.io/basic-auth \
        --from-literal=username=postgres --from-literal=password="$SUPER" \
        --dry-run=client -o yaml | $KUBECTL apply -f -
    $KUBECTL -n "$ns" create secret generic spock-replicator --type=kubernetes.io/basic-auth \
        --from-literal=username=spock_replicator --from-literal=password="$REPL" \
        --dry-run=client -o yaml | $KUBECTL apply -f -
done
