# The in-pod half of hal9999.providers.k8s.sockmux in perl, for images without python3
# (perl-base is Essential on Debian). Same protocol and bounds as sockmux_pod.py: frames
# "kind(1) id(4) length(4) payload" on stdin/stdout, kinds 1 OPEN 2 DATA 3 EOF 4 CLOSE 5 ACK
# 6 READY, 64 KiB frames, a 256 KiB window per connection and direction, 64 connections.
# One select loop; the end of stdin ends every connection and removes the sockets.
use strict;
use warnings;
use IO::Select;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my ($OPEN, $DATA, $EOF, $CLOSE, $ACK, $READY) = (1, 2, 3, 4, 5, 6);
my ($MAX, $WINDOW, $CONNS) = (65536, 262144, 64);
my @paths = @ARGV;
my (@listeners, %index_of, %conn, %id_of_fd);
my $next_id = 1;
binmode STDIN;
binmode STDOUT;

sub send_frame {
    my ($kind, $id, $payload) = @_;
    $payload = '' unless defined $payload;
    my $frame = pack('CNN', $kind, $id, length $payload) . $payload;
    my $off = 0;
    while ($off < length $frame) {
        my $n = syswrite(STDOUT, $frame, length($frame) - $off, $off);
        die "hal-sockmux: stdout: $!\n" unless defined $n;
        $off += $n;
    }
}

sub drop {
    my ($id) = @_;
    my $c = delete $conn{$id} or return;
    delete $id_of_fd{fileno $c->{sock}};
    close $c->{sock};
}

for my $i (0 .. $#paths) {
    unlink $paths[$i];    # a stale socket of an earlier run (unlink never follows a link)
    my $l = IO::Socket::UNIX->new(Local => $paths[$i], Type => SOCK_STREAM, Listen => 128)
        or die "hal-sockmux: cannot listen on $paths[$i]: $!\n";
    $index_of{fileno $l} = $i;
    push @listeners, $l;
}
send_frame($READY, 0);
my $in = '';
my $stdin_open = 1;
while ($stdin_open) {
    my $readers = IO::Select->new(\*STDIN, @listeners);
    my $writers = IO::Select->new();
    for my $c (values %conn) {
        $readers->add($c->{sock}) if $c->{credit} > 0 && !$c->{eof_out};
        $writers->add($c->{sock}) if length $c->{out};
    }
    my ($readable, $writable) = IO::Select->select($readers, $writers, undef);
    for my $fh (@{$writable || []}) {
        my $id = $id_of_fd{fileno $fh} or next;
        my $c = $conn{$id};
        my $n = syswrite($fh, $c->{out});
        if (!defined $n) { next if $!{EAGAIN}; send_frame($CLOSE, $id); drop($id); next; }
        substr($c->{out}, 0, $n) = '';
        send_frame($ACK, $id, pack('N', $n));
        if (!length $c->{out} && $c->{eof_in} && !$c->{shut}) {
            shutdown($fh, 1);
            $c->{shut} = 1;
            drop($id) if $c->{eof_out};
        }
    }
    for my $fh (@{$readable || []}) {
        if (fileno($fh) == 0) {
            my $n = sysread(STDIN, my $buffer, 1 << 18);
            if (!$n) { $stdin_open = 0; last; }
            $in .= $buffer;
            while (length $in >= 9) {
                my ($kind, $id, $size) = unpack('CNN', $in);
                die "hal-sockmux: oversized frame from the host\n" if $size > $MAX;
                last if length $in < 9 + $size;
                my $payload = substr($in, 9, $size);
                substr($in, 0, 9 + $size) = '';
                my $c = $conn{$id} or next;
                if ($kind == $DATA) { $c->{out} .= $payload; }
                elsif ($kind == $EOF) {
                    $c->{eof_in} = 1;
                    if (!length $c->{out}) {
                        shutdown($c->{sock}, 1);
                        $c->{shut} = 1;
                        drop($id) if $c->{eof_out};
                    }
                }
                elsif ($kind == $ACK && $size == 4) { $c->{credit} += unpack('N', $payload); }
                elsif ($kind == $CLOSE) { drop($id); }
            }
        } elsif (defined $index_of{fileno $fh}) {
            my $sock = $fh->accept or next;
            if (keys %conn >= $CONNS) { close $sock; next; }
            $sock->blocking(0);
            my $id = $next_id;
            $next_id = $next_id % 4294967295 + 1;
            $conn{$id} = {sock => $sock, credit => $WINDOW, out => ''};
            $id_of_fd{fileno $sock} = $id;
            send_frame($OPEN, $id, pack('C', $index_of{fileno $fh}));
        } else {
            my $id = $id_of_fd{fileno $fh} or next;
            my $c = $conn{$id};
            my $want = $c->{credit} < $MAX ? $c->{credit} : $MAX;
            my $n = sysread($fh, my $buffer, $want);
            next if !defined $n && $!{EAGAIN};
            if (!$n) {
                send_frame($EOF, $id);
                $c->{eof_out} = 1;
                drop($id) if $c->{shut};
                next;
            }
            $c->{credit} -= $n;
            send_frame($DATA, $id, $buffer);
        }
    }
}
unlink @paths;
exit 0;
