package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric, as upstream
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// controllerManager runs kube-controller-manager's own command on os.Args[1:], exactly
// as cmd/kube-controller-manager does.
func controllerManager() int {
	return cli.Run(kcm.NewControllerManagerCommand())
}

// kubectl runs kubectl's own command, exactly as cmd/kubectl does; argv[0] is "kubectl".
func kubectl(argv []string) int {
	os.Args = argv
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
		kubectlutil.CheckErr(err) // prints it the kubectl way and exits non-zero
	}
	return 0
}
