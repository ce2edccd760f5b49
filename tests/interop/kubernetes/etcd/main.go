// The etcd server at the version go.mod pins, as a command: kube-apiserver's storage in the
// Kubernetes interop tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
