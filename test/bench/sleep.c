/* The runc baseline for idle cost: a static process that sleeps. */
#include <unistd.h>
int main(void) { for (;;) pause(); }
