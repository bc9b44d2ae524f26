/* pause: the process that holds a pod's namespaces on the test cluster's real
 * node (the kubelet's "sandbox image"). It sleeps until SIGTERM or SIGINT and
 * reaps the children the pid namespace hands to it. Built static, alone in its
 * image (tests/cluster/realnode/build-images). */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig)
{
    (void)sig;
    _exit(0);
}

static void reap(int sig)
{
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = leave;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;)
        pause();
    return EXIT_FAILURE;
}
