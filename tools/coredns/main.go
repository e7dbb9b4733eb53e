// Command coredns is CoreDNS with only the plugins the test node's cluster DNS uses: the
// kubernetes plugin answers <service>.<namespace>.svc.cluster.local from the API, as in any cluster.
// Building CoreDNS's own main would compile every cloud provider's DNS plugin for nothing.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order plugins see a query in: CoreDNS's plugin.cfg order, restricted to the ones above.
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
